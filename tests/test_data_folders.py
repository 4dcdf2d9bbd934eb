"""Image folders: labels from folder names, colour modes, the small-image cache, bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab.data.folder as folder
from resnetlab.config import DataConfig
from resnetlab.data import ArrayDataset, FileDataset, build_data, load_images
from resnetlab.errors import UserError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def _write(path, colour, size=(32, 32), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    (img if mode == "RGB" else img.convert(mode)).save(path, format=fmt)


def _tree(root, per_class=4, splits=("train", "test"), size=(32, 32)):
    for split in splits:
        for name, colour in COLOURS.items():
            for i in range(per_class):
                _write(root / split / name / f"{i}.png", colour, size)
    return root


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
    assert x.shape == (4, 3, 32, 32) and bundle.info["resized"] == 1
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


def test_only_val_folder_becomes_the_test_split(tmp_path):
    bundle = build_data(_cfg(_tree(tmp_path / "d", splits=("train", "val")), tmp_path, val_size=3), seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 12)


def test_val_and_test_folders_are_both_used(tmp_path):
    bundle = build_data(_cfg(_tree(tmp_path / "d", splits=("train", "val", "test")), tmp_path, val_size=3))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 12, 12)


@pytest.mark.parametrize("damage,message", [
    ("corrupt", r"cat/0\.png: not an image Pillow can read"),
    ("truncated", r"cat/0\.jpg: truncated"),
    ("text", r"cat/notes\.txt: not an image file"),
    ("empty_class", r"class folder .*/train/dog holds no images"),
])
def test_bad_input_names_the_file_or_folder(tmp_path, damage, message):
    root = _tree(tmp_path / "d", splits=("train",))
    cat = root / "train" / "cat"
    if damage == "corrupt":
        (cat / "0.png").write_bytes(b"definitely not a png")
    elif damage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(cat / "0.jpg")
        (cat / "0.jpg").write_bytes((cat / "0.jpg").read_bytes()[:300])
    elif damage == "text":
        (cat / "notes.txt").write_text("hello")
    else:
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    with pytest.raises(UserError, match=message):
        build_data(_cfg(root, tmp_path))
    bundle = build_data(_cfg(root, tmp_path, skip_bad=True))
    assert len(bundle.info["skipped"]) == 1
    assert bundle.classes == sorted(COLOURS)  # a skipped class keeps its index
    for img, label in zip(bundle.train.images, bundle.train.labels):
        assert tuple(img[:, 0, 0].tolist()) == COLOURS[bundle.classes[label]]  # never a wrong label


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match="no train/ folder"):
        build_data(_cfg(tmp_path, tmp_path))
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
    from resnetlab.data import make_train_loader
    root = _tree(tmp_path / "d", size=(100, 80), splits=("train",))
    (root / "train" / "cat" / "1.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=r"cat/1\.png"):  # the normaliser's statistics decode it
        build_data(_cfg(root, tmp_path, image_size=64, augment="rrc"))
    cfg = _cfg(root, tmp_path, image_size=64, augment="rrc", normalize="imagenet")
    train = build_data(cfg).train  # nothing decoded yet: large images are read by the loaders
    with pytest.raises(UserError, match=r"cat/1\.png: not an image Pillow can read"):
        list(make_train_loader(train, cfg, batch_size=12))
    cfg.skip_bad = True
    loader = make_train_loader(train, cfg, batch_size=12)
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
