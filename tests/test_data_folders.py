"""Image folders: labels from folder names, colour modes, the small-image cache, bad input."""
import os
import re
import shutil
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

import resnetlab.data.folder as folder
from resnetlab.config import DataConfig
from resnetlab.data import ArrayDataset, FileDataset, build_data, load_images
from resnetlab.errors import ResnetlabWarning, UserError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def _write(path, colour, size=(32, 32), mode="RGB", fmt=None, tag=None):
    """tag: a PNG text chunk, so that images of one colour are not byte-identical files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    info = None
    if tag is not None:
        info = PngInfo()
        info.add_text("tag", tag)
    (img if mode == "RGB" else img.convert(mode)).save(path, format=fmt, **({"pnginfo": info} if info else {}))


def _tree(root, per_class=4, splits=("train", "test"), size=(32, 32)):
    """Solid-colour PNGs, the same pixels in every split, each file's bytes its own (no split shares a file)."""
    for split in splits:
        for name, colour in COLOURS.items():
            for i in range(per_class):
                _write(root / split / name / f"{i}.png", colour, size, tag=f"{split}/{name}/{i}")
    return root


def huge_png(path, side=20000):
    """A PNG header claiming side x side pixels (400 M for 20000: over Pillow's bomb limit) in a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _cfg(root, tmp_path, **kw):
    kw.setdefault("val_size", 0)
    return DataConfig(dataset="folder", root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def test_labels_match_folder_names(tmp_path):
    bundle = build_data(_cfg(_tree(tmp_path / "d"), tmp_path))
    assert bundle.classes == sorted(COLOURS) and isinstance(bundle.train, ArrayDataset)
    for data in (bundle.train, bundle.test):
        for img, label in zip(data.images, data.labels):
            assert tuple(img[:, 0, 0].tolist()) == COLOURS[bundle.classes[label]]


def test_grey_cmyk_jpeg_png_become_rgb(tmp_path):
    root = tmp_path / "d"
    _write(root / "train" / "cat" / "grey.png", (90, 90, 90), mode="L")
    _write(root / "train" / "cat" / "cmyk.jpg", (200, 30, 30), mode="CMYK", fmt="JPEG")
    _write(root / "train" / "dog" / "rgba.png", (30, 200, 30), mode="RGBA")
    _write(root / "train" / "dog" / "big.bmp", (30, 200, 30), size=(48, 40))  # resized to 32x32
    bundle = build_data(_cfg(root, tmp_path))
    x = bundle.train.images
    assert x.shape == (4, 3, 32, 32) and bundle.provenance["resized"] == 1
    assert x[1, :, 5, 5].tolist() == [90, 90, 90]
    assert (x[0, :, 5, 5].int() - torch.tensor([200, 30, 30])).abs().max() <= 6  # JPEG rounding


def test_small_images_decode_once_then_come_from_the_cache(tmp_path, monkeypatch):
    cfg = _cfg(_tree(tmp_path / "d"), tmp_path)
    first = build_data(cfg)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # train and test
    monkeypatch.setattr(folder, "decode_crops", lambda *a: pytest.fail("decoded again"))
    second = build_data(cfg)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.train.labels, second.train.labels)


def test_a_cache_folder_that_cannot_be_made_warns_once_and_the_data_is_still_built(tmp_path):
    (tmp_path / "afile").write_text("")
    cfg = replace(_cfg(_tree(tmp_path / "d"), tmp_path), cache_dir=str(tmp_path / "afile" / "cache"))
    with pytest.warns(ResnetlabWarning) as caught:
        bundle = build_data(cfg)
    assert [str(w.message) for w in caught] == [
        f"the decoded images are not cached in {tmp_path / 'afile' / 'cache'} (Not a directory): the next run decodes "
        "them again; set data.cache_dir=DIR (or RESNETLAB_CACHE) to name another folder"] * 2  # the CLI shows it once
    assert bundle.classes == sorted(COLOURS) and len(bundle.train) == 4 * len(COLOURS)
    assert bundle.provenance["caches"] == [] and (tmp_path / "afile").read_text() == ""


def test_a_folder_beside_train_is_named_not_dropped_silently(tmp_path):
    root = _tree(tmp_path / "d")
    _write(root / "bird" / "0.png", (1, 2, 3))  # meant as a class, put beside train/
    with pytest.warns(ResnetlabWarning, match=r"has a folder beside train/ that no split reads: bird/; a class's images "
                                              r"belong in train/<class>/"):
        bundle = build_data(_cfg(root, tmp_path))
    assert bundle.classes == sorted(COLOURS)


def test_cache_key_changes_when_a_file_changes(tmp_path):
    root = _tree(tmp_path / "d")
    cfg = _cfg(root, tmp_path)
    build_data(cfg)
    _write(root / "train" / "cat" / "0.png", (0, 0, 0), size=(32, 32))
    (root / "train" / "cat" / "0.png").touch()
    bundle = build_data(cfg)
    assert bundle.train.images[0, :, 0, 0].tolist() == [0, 0, 0]


def test_large_images_stay_files(tmp_path):
    bundle = build_data(_cfg(_tree(tmp_path / "d", size=(100, 80)), tmp_path, image_size=64, eval_resize=72,
                             augment="imagenet", scale_min=70, scale_max=90))
    assert isinstance(bundle.train, FileDataset) and len(bundle.train) == 12
    assert bundle.normalizer.mean.shape == (3, 64, 64)
    assert torch.allclose(bundle.normalizer.mean[:, 10, 10], torch.tensor([260.0, 260, 260]) / 3 / 255, atol=0.01)


def test_an_image_deleted_after_the_data_was_read_is_said_to_be_put_back(tmp_path):
    """A photo deleted while a run trains: the line said "remove it" of a file already gone."""
    from resnetlab.data import LoaderSpec, make_eval_loader

    cfg = _cfg(_tree(tmp_path / "d", size=(100, 80)), tmp_path, image_size=64, eval_resize=72)
    bundle = build_data(cfg)
    gone = bundle.test.paths[0]
    os.remove(gone)
    with pytest.raises(UserError) as err:
        list(make_eval_loader(bundle.test, cfg, LoaderSpec(12)))
    assert str(err.value) == (f"{gone}: no such file; it was listed when the data was read: put it back or set "
                              "data.skip_bad=true to skip bad files")


def test_val_folder_is_the_validation_split_or_with_val_folder_test_the_test_split(tmp_path):
    root = _tree(tmp_path / "d", splits=("train", "val"))
    bundle = build_data(_cfg(root, tmp_path, val_size=3), seed=0)  # val_size unused: val/ is the validation split
    assert (len(bundle.train), len(bundle.val), bundle.test) == (12, 12, None)
    assert bundle.provenance["validation"] == {"from": "val/ folder", "val_size": 3}
    bundle = build_data(_cfg(root, tmp_path, val_size=3, val_folder="test"), seed=0)  # ImageNet's protocol
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 12)


def test_val_and_test_folders_are_both_used(tmp_path):
    bundle = build_data(_cfg(_tree(tmp_path / "d", splits=("train", "val", "test")), tmp_path, val_size=3))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 12, 12)


@pytest.mark.parametrize("damage,message", [
    ("corrupt", r"cat/0\.png: not an image Pillow can read"),
    ("truncated", r"cat/0\.jpg: truncated"),
    ("bomb", r"cat/0\.png: refused as a possible decompression bomb"),
    ("dangling", r"cat/gone\.png: dangling symbolic link \(to .*/nowhere\.png, which does not exist\)"),
    ("loop", r"cat/gone\.png: a symbolic link loop \(to .*/back\.png, which leads back to it\)"),  # was "dangling"
])
def test_bad_input_names_the_file_or_folder(tmp_path, damage, message):
    root = _tree(tmp_path / "d", splits=("train",))
    cat = root / "train" / "cat"
    if damage == "corrupt":
        (cat / "0.png").write_bytes(b"definitely not a png")
    elif damage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(cat / "0.jpg")
        (cat / "0.jpg").write_bytes((cat / "0.jpg").read_bytes()[:300])
    elif damage == "bomb":
        huge_png(cat / "0.png")
    elif damage == "dangling":
        (cat / "gone.png").symlink_to(tmp_path / "nowhere.png")
    else:
        (cat / "gone.png").symlink_to(tmp_path / "back.png")
        (tmp_path / "back.png").symlink_to(cat / "gone.png")
    with pytest.raises(UserError, match=message):
        build_data(_cfg(root, tmp_path))
    with pytest.warns(ResnetlabWarning, match=r"skipped 1 unreadable file \(train/cat/"):
        bundle = build_data(_cfg(root, tmp_path, skip_bad=True))
    assert len(bundle.provenance["skipped"]) == 1 and re.search(message, "{}: {}".format(*bundle.provenance["skipped"][0]))
    assert len(bundle.train) == 12 - (damage in ("corrupt", "bomb"))  # the others add a bad file beside the 12
    for img, label in zip(bundle.train.images, bundle.train.labels):
        assert tuple(img[:, 0, 0].tolist()) == COLOURS[bundle.classes[label]]  # never a wrong label


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match=r"has no class folders; expected ROOT/<class>/<image> or ROOT/train/<class>"):
        build_data(_cfg(tmp_path / "cache", tmp_path))
    _write(tmp_path / "only" / "test" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(UserError, match=r"only has no train/ folder \(only test/\): nothing to train on; .*"
                                        r"\(evaluate_checkpoint\(RUN, data='.*only'\) evaluates a model on it\)$"):
        build_data(_cfg(tmp_path / "only", tmp_path))
    _write(tmp_path / "one" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(UserError, match=r"one class folder \(cat\); a classifier needs at least two"):
        build_data(_cfg(tmp_path / "one", tmp_path))
    _write(tmp_path / "train" / "loose.png", (1, 2, 3))
    with pytest.raises(UserError, match="has no class folders .*1 files directly inside"):
        build_data(_cfg(tmp_path, tmp_path))
    root = _tree(tmp_path / "d")
    _write(root / "test" / "yak" / "0.png", (1, 2, 3))
    with pytest.raises(UserError, match="class folders not in train/: yak"):
        build_data(_cfg(root, tmp_path))
    with pytest.raises(UserError, match="data.root is not set"):
        build_data(DataConfig(dataset="folder"))
    with pytest.raises(UserError, match="unknown data.dataset"):
        build_data(DataConfig(dataset="mnist"))


def test_bad_large_file_fails_at_load_time_or_is_skipped(tmp_path):
    from resnetlab.data import LoaderSpec, make_train_loader
    root = _tree(tmp_path / "d", size=(100, 80), splits=("train",))
    (root / "train" / "cat" / "1.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=r"cat/1\.png"):  # the normaliser's statistics decode it
        build_data(_cfg(root, tmp_path, image_size=64, augment="rrc"))
    cfg = _cfg(root, tmp_path, image_size=64, augment="rrc", normalize="imagenet")
    train = build_data(cfg).train  # nothing decoded yet: large images are read by the loaders
    with pytest.raises(UserError, match=r"cat/1\.png: not an image Pillow can read"):
        list(make_train_loader(train, cfg, LoaderSpec(12)))
    with pytest.raises(UserError, match="workers .* must be >= 0, got -1"):
        make_train_loader(train, cfg, LoaderSpec(12, workers=-1))
    cfg.skip_bad = True
    loader = make_train_loader(train, cfg, LoaderSpec(12))
    with pytest.warns(ResnetlabWarning, match=r"skipped 1 unreadable file while decoding .*cat/1\.png"):
        (x, y), = list(loader)
    assert len(x) == len(y) == 11 and len(loader.skipped) == 1


def test_load_images_reports_failures(tmp_path):
    _write(tmp_path / "a.png", (10, 20, 30), size=(50, 40))
    (tmp_path / "b.jpg").write_bytes(b"nope")
    images, failed = load_images([tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"], 32, 36)
    assert images.shape == (1, 3, 32, 32) and images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert [f[0] for f in failed] == [str(tmp_path / "b.jpg"), str(tmp_path / "c.png")]


def test_exif_rotated_photo_is_loaded_upright(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)  # landscape as stored, top rows red
    pixels[:10] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown as portrait, red on the right
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    images, failed = load_images([tmp_path / "photo.jpg"], 40, 40)
    upright = np.asarray(Image.open(tmp_path / "photo.jpg").transpose(Image.Transpose.ROTATE_270))
    assert failed == [] and upright.shape == (60, 40, 3)
    assert images[0, 0, 20, -1] > 200 and images[0, 0, 20, 0] < 50  # red column on the right


def test_an_image_made_in_memory_from_a_photo_keeps_its_rotation(tmp_path):
    """Image.open(f).convert("RGB") (format None) was read sideways: only opened files were turned."""
    from resnetlab.data.decode import decode_crops

    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:10] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    whole = lambda w, h: [((0, 0, w, h), (w, h))]  # noqa: E731
    from_file, = decode_crops(tmp_path / "photo.jpg", whole)
    for derived in (Image.open(tmp_path / "photo.jpg").convert("RGB"), Image.open(tmp_path / "photo.jpg").copy()):
        assert derived.format is None
        array, = decode_crops(derived, whole)
        assert array.shape == (60, 40, 3) and np.array_equal(array, from_file)  # upright, as the file is
    already = ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg"))  # turned by the user: not turned again
    array, = decode_crops(already, whole)
    assert np.array_equal(array, from_file)


# The decoding before PIL.ImageOps.exif_transpose took over: EXIF orientation -> transpose.
OLD_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_decodes_as_the_hand_written_transpose_did(tmp_path, orientation):
    from resnetlab.data.decode import center_box, decode_crops

    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "photo.jpg", exif=exif, quality=90)
    stored = Image.open(tmp_path / "photo.jpg").convert("RGB")
    upright = stored.transpose(OLD_TRANSPOSE[orientation]) if orientation in OLD_TRANSPOSE else stored
    full, = decode_crops(tmp_path / "photo.jpg", lambda w, h: [((0, 0, w, h), (w, h))])
    np.testing.assert_array_equal(full, np.asarray(upright))  # every pixel, bit for bit
    # A small centre crop: decoded at a reduced JPEG scale (draft) and planned on the upright size.
    w, h = upright.size
    small, = decode_crops(tmp_path / "photo.jpg", lambda w, h: [(center_box(w, h, 16, 16), (16, 16))])
    draft = Image.open(tmp_path / "photo.jpg")
    draft.draft("RGB", (draft.size[0] // 2, draft.size[1] // 2))
    draft = draft.convert("RGB")
    draft = draft.transpose(OLD_TRANSPOSE[orientation]) if orientation in OLD_TRANSPOSE else draft
    sx, sy = draft.size[0] / w, draft.size[1] / h
    l, t, r, b = center_box(w, h, 16, 16)
    expected = draft.resize((16, 16), Image.BILINEAR, box=(l * sx, t * sy, r * sx, b * sy))
    np.testing.assert_array_equal(small, np.asarray(expected))


def test_a_train_class_left_without_images_is_an_error_even_with_skip_bad(tmp_path):
    root = _tree(tmp_path / "d")
    for i in range(4):
        (root / "train" / "dog" / f"{i}.png").write_bytes(b"broken")
    for skip_bad in (False, True):
        with pytest.raises(UserError, match=r"dog/0\.png" if not skip_bad else
                           r"class 'dog' has no readable training images \(.*/train/dog: 4 unreadable files skipped\)"):
            build_data(_cfg(root, tmp_path, skip_bad=skip_bad))
    for f in (root / "train" / "dog").iterdir():  # an empty folder: the same, with skip_bad or not
        f.unlink()
    for skip_bad in (False, True):  # and skipping is not offered: it cannot give the class images
        with pytest.raises(UserError, match=r"class folder .*/train/dog holds no images; add images or remove the "
                                            r"folder$"):
            build_data(_cfg(root, tmp_path, skip_bad=skip_bad))


def test_a_test_class_left_without_images_is_reported_by_name(tmp_path, capsys):
    from resnetlab.cli import main

    root = _tree(tmp_path / "d")
    for i in range(4):
        (root / "test" / "dog" / f"{i}.png").write_bytes(b"broken")
    with pytest.warns(ResnetlabWarning) as said:
        bundle = build_data(_cfg(root, tmp_path, skip_bad=True))
    assert [str(w.message) for w in said] == [
        f"data.skip_bad: skipped 4 unreadable files (test/dog/0.png, test/dog/1.png, test/dog/2.png, ...); "
        f"`resnetlab data {root} --skip-bad` lists every file with its reason",
        "test/ has no images of class dog: its test error counts only cat, emu"]
    assert bundle.provenance["empty_classes"] == {"test": ["dog"]} and bundle.classes == sorted(COLOURS)
    assert sorted(set(bundle.test.labels.tolist())) == [0, 2]  # cat and emu keep their indices
    assert main(["data", str(root), "--skip-bad", "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    assert "no test images of dog" in out and out.count("skipped ") == 4 and err == ""  # listed once, on stdout


def test_a_val_folder_without_a_class_says_so_and_not_skip_bad(tmp_path):
    root = _tree(tmp_path / "d", splits=("train", "val", "test"))
    shutil.rmtree(root / "val" / "cat")
    with pytest.warns(ResnetlabWarning) as said:
        bundle = build_data(_cfg(root, tmp_path))
    assert [str(w.message) for w in said] == ["val/ has no images of class cat: its validation error counts only dog, emu"]
    assert bundle.provenance["empty_classes"] == {"val": ["cat"]}


def test_skipped_files_are_counted_when_met_while_decoding(tmp_path):
    from resnetlab.data import LoaderSpec, make_eval_loader, make_train_loader

    root = _tree(tmp_path / "d", size=(100, 80), splits=("train",))
    huge_png(root / "train" / "cat" / "1.png")  # its header refuses it: with skip_bad, left out as the data is built
    cut = root / "train" / "cat" / "2.png"  # its header reads, its data is cut short: met only when decoded
    cut.write_bytes(cut.read_bytes()[:cut.read_bytes().index(b"IDAT") + 23])  # 19 bytes of its pixel data
    (root / "train" / "emu" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    cfg = _cfg(root, tmp_path, image_size=64, augment="rrc", normalize="imagenet")
    with pytest.raises(UserError, match=r"emu/gone\.png: dangling symbolic link"):
        build_data(cfg)
    cfg.skip_bad = True
    with pytest.warns(ResnetlabWarning, match=r"skipped 2 unreadable files \(train/emu/gone\.png, train/cat/1\.png\)"):
        train = build_data(cfg).train  # the link found by the scan, the bomb by its header
    assert len(train) == 11
    with pytest.raises(UserError, match=r"cat/2\.png: truncated or corrupt image"):
        list(make_train_loader(train, _cfg(root, tmp_path, image_size=64, augment="rrc"), LoaderSpec(11)))
    with pytest.warns(ResnetlabWarning, match=r"skipped 1 unreadable file while decoding \(.*cat/2\.png: truncated or "
                                              r"corrupt image .*\); 1 of 11 files of this split"):
        (x, y), = list(make_train_loader(train, cfg, LoaderSpec(11)))
    assert len(x) == 10
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next epoch and an evaluation: already reported, no new warning
        assert len(list(make_train_loader(train, cfg, LoaderSpec(11), epoch=1))) == 1
        assert sum(len(y) for _, y in make_eval_loader(train, cfg, LoaderSpec(4))) == 10



def test_decoding_workers_take_sigterms_default_action_inside_a_training_runs_handler():
    """Pool.terminate() stops workers with SIGTERM; inside StopOnSignal (installed before the data is
    built) a worker that kept the inherited handler would only record it and live on, and the
    parent would wait for it forever. The workers ignore Ctrl-C: the parent decides."""
    import signal

    from resnetlab.engine.signals import StopOnSignal

    with StopOnSignal(), folder.decode_pool(1) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
        pool.close()
        pool.join()


def _damage(kind, path):
    data = path.read_bytes()
    if kind == "cut short":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an archive\n")
    elif kind == "pickle":  # never unpickled: np.load refuses it
        path.write_bytes(b"\x80\x04\x95" + b"\0" * 40)
    elif kind == "flipped byte":  # a byte of the images array: the zip's CRC check fails
        path.write_bytes(data[:2000] + bytes([data[2000] ^ 0xFF]) + data[2001:])
    elif kind == "other keys":
        np.savez(path, weights=np.zeros(3))
    elif kind == "wrong shape":
        np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), keep=np.ones(12, bool), resized=np.int64(0),
                 reasons=np.array([], dtype=str))
    elif kind == "one array":
        np.save(path.with_suffix(""), np.zeros(3))
        path.with_suffix(".npy").replace(path)


@pytest.mark.parametrize("kind", ["cut short", "empty", "text", "pickle", "flipped byte", "other keys", "wrong shape",
                                  "one array"])
def test_a_damaged_or_foreign_cache_file_is_decoded_again_and_replaced(tmp_path, kind):
    cfg = _cfg(_tree(tmp_path / "d"), tmp_path)
    first = build_data(cfg)
    cache = next(c for c in (tmp_path / "cache").glob("*.npz") if c.name in first.provenance["caches"][0])
    _damage(kind, cache)
    with pytest.warns(ResnetlabWarning, match=rf"the decoded-image cache {re.escape(str(cache))} is damaged or not "
                                              r"resnetlab's \(.+\): decoding the images again and replacing it"):
        second = build_data(cfg)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.train.labels, second.train.labels)
    with np.load(cache) as z:  # replaced by a good one: the third build reads it without a word
        assert z["images"].shape == (12, 32, 32, 3)


def test_an_image_replaced_with_its_size_and_mtime_kept_is_not_served_from_the_cache(tmp_path):
    root = _tree(tmp_path / "d")
    image = root / "train" / "cat" / "0.bmp"  # BMP: an uncompressed image of the same side has the same byte count
    (root / "train" / "cat" / "0.png").unlink()
    _write(image, COLOURS["cat"])
    cfg = _cfg(root, tmp_path)
    assert build_data(cfg).train.images[0, :, 0, 0].tolist() == list(COLOURS["cat"])
    stat = image.stat()
    _write(tmp_path / "new.bmp", (0, 0, 1))
    shutil.copyfile(tmp_path / "new.bmp", image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert build_data(cfg).train.images[0, :, 0, 0].tolist() == [0, 0, 1]


def test_what_nas_boxes_and_zip_files_leave_beside_photos_is_neither_class_nor_image(tmp_path):
    """Synology's @eaDir became a class (its thumbnails trained on, twice, also in validation) and an
    unzipped __MACOSX stopped the run ("class folder holds no images")."""
    root = _tree(tmp_path / "d")
    _write(root / "train" / "@eaDir" / "0.png" / "SYNOPHOTO_THUMB_S.jpg", (9, 9, 9))
    _write(root / "train" / "cat" / "@eaDir" / "0.png" / "SYNOPHOTO_THUMB_M.jpg", (9, 9, 9))
    (root / "train" / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\0\5\26\7 resource fork")
    (root / "test" / "#recycle").mkdir()
    _write(root / "train" / "emu" / "4.jpe", COLOURS["emu"], fmt="JPEG")  # a JPEG by another of its names
    bundle = build_data(_cfg(root, tmp_path))
    assert bundle.classes == sorted(COLOURS)
    assert bundle.train.labels.bincount().tolist() == [4, 4, 5]
    assert bundle.provenance["ignored"] == []


def test_a_class_named_in_another_unicode_form_in_test_is_the_training_class(tmp_path):
    """A train/ copied from a Mac holds 'cafe\\u0301' (decomposed), a test/ made here 'caf\\xe9': the two look
    the same, and the run stopped with "class folders not in train/: café"."""
    import unicodedata

    root = tmp_path / "d"
    for split, name in (("train", "cafe\u0301"), ("train", "tea"), ("test", "caf\u00e9"), ("test", "tea")):
        for i in range(3):
            _write(root / split / name / f"{i}.png", (200, 0, 0) if name != "tea" else (0, 200, 0), tag=f"{split}{i}")
    bundle = build_data(_cfg(root, tmp_path))
    assert bundle.classes == ["cafe\u0301", "tea"] and unicodedata.is_normalized("NFD", bundle.classes[0])
    assert bundle.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [tuple(img[:, 0, 0].tolist()) for img in bundle.test.images][:1] == [(200, 0, 0)]


def test_eval_folders_match_a_models_classes_in_either_unicode_form():
    from resnetlab.data.datasets import match_classes

    folder = ArrayDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["tea", "cafe\u0301"])
    matched = match_classes(folder, ["caf\u00e9", "tea"], "the folder")
    assert matched.labels.tolist() == [1, 0] and matched.classes == ["caf\u00e9", "tea"]


def test_two_training_folders_of_one_name_in_two_unicode_forms_are_refused(tmp_path):
    """Both were classes, but every image of both got the second one's label: one class empty, silently."""
    root = tmp_path / "d"
    for name in ("caf\u00e9", "cafe\u0301", "tea"):
        for i in range(2):
            _write(root / "train" / name / f"{i}.png", (200, 0, 0))
    with pytest.raises(UserError, match=r"two class folders named 'caf.*' \(in two Unicode forms: 'cafe\\u0301' and "
                                        r"'caf\\xe9'\); merge them into one"):
        build_data(_cfg(root, tmp_path))
