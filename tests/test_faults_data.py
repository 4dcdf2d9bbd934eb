"""A run's data changed under it: --resume refuses in one line before anything is loaded or
written, eval --split val still scores the hold-out RUN/data.json recorded, a moved folder with the same
images resumes, and a deleted data folder, a missing run directory and --resume with --out are
said plainly."""
import json
import os
import shutil

import pytest
import yaml
from test_data_folders import _write
from test_engine_train import tiny_config

from resnetlab.cli import main
from resnetlab.config import config_to_dict, load_config
from resnetlab.engine import load_checkpoint

COLOURS = {"bird": (30, 30, 200), "cat": (200, 30, 30), "dog": (30, 200, 30)}


def photos(root, per_class=8, colours=COLOURS):
    for name, colour in colours.items():
        for i in range(per_class):
            _write(root / name / f"img{i}.png", colour, (16, 16), tag=f"{name}{i}")  # one colour, its own bytes
    return root


@pytest.fixture
def run(tmp_path, capsys):
    """(data folder, run directory): a 2-step ResNet-8 run on ROOT/<class>/ PNGs, 6 of 24 held out."""
    return trained_on(photos(tmp_path / "basic"), tmp_path, capsys)


def trained_on(data, tmp_path, capsys):
    cfg = tiny_config(("data.dataset", "folder"), ("data.root", str(data)), ("data.val_size", 0.25),
                      ("data.cache_dir", str(tmp_path / "cache")), ("schedule.max_steps", 2), ("optim.batch_size", 6))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert main(["train", "--recipe", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    return data, tmp_path / "run"


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused(capsys, run, *argv) -> str:
    before = snapshot(run)
    assert main(["train", "--resume", str(run), *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert snapshot(run) == before  # nothing loaded into the run, nothing overwritten
    return lines[0]


def test_resume_refuses_a_replaced_class(run, capsys):
    data, out = run
    shutil.rmtree(data / "bird")
    photos(data, colours={"zebra": (9, 9, 9)})
    line = refused(capsys, out)
    assert line.startswith(f"resnetlab train: error: --resume {out}: the data at {data} is not what the run trained on")
    assert "classes were bird, cat, dog; now cat, dog, zebra" in line
    assert f"start a new run from its weights (--init {out} --out NEW_RUN)" in line


def test_resume_refuses_an_added_class_before_loading_the_checkpoint(run, capsys):
    data, out = run
    photos(data, colours={"zebra": (9, 9, 9)})
    line = refused(capsys, out)
    assert "classes were bird, cat, dog; now bird, cat, dog, zebra" in line and "state_dict" not in line


def test_resume_refuses_added_photos_and_keeps_the_hold_out_record(run, capsys):
    data, out = run
    for i in range(8, 12):
        _write(data / "cat" / f"img{i}.png", COLOURS["cat"], (16, 16), tag=f"new{i}")
    line = refused(capsys, out)
    assert "train images per class were cat 6; now cat 9; val images per class were cat 2; now cat 3" in line


def test_resume_refuses_a_photo_replaced_under_its_name_and_takes_a_copy_that_keeps_mtimes(run, tmp_path, capsys):
    """Same names and counts: a resumed run went on with other images without a word."""
    data, out = run
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # copy2: sizes and modification times kept, as cp -a and rsync -a keep them
    photo = data / "cat" / "img3.png"
    stat = photo.stat()
    _write(photo, (250, 250, 250), (16, 16))
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    line = refused(capsys, out)
    assert ("images of train were replaced or edited since (same names" in line
            or "images of val were replaced or edited since (same names" in line)
    assert main(["train", "--resume", str(out), "--data", str(copy), "--max-steps", "4"]) == 0


def uncompressed_photos(root, colours=COLOURS, shift=0):
    """BMPs of one resolution: every file the same size, whatever its pixels (shift: other pixels)."""
    from PIL import Image
    for name, colour in colours.items():
        for i in range(8):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), tuple(c + i + shift for c in colour)).save(root / name / f"img{i}.bmp")
    return root


@pytest.fixture
def bmp_run(tmp_path, capsys):
    return trained_on(uncompressed_photos(tmp_path / "bmp"), tmp_path, capsys)


def test_resume_refuses_other_pixels_in_files_of_the_same_names_sizes_and_times(bmp_run, capsys):
    """Names, sizes and mtimes were the whole fingerprint: a cat replaced by a dog of the same size, its
    time kept (touch -r, archives with fixed times), resumed on other images without a word."""
    data, out = bmp_run
    cat, dog = data / "cat" / "img3.bmp", data / "dog" / "img3.bmp"
    stat = cat.stat()
    cat.write_bytes(dog.read_bytes())
    os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    line = refused(capsys, out)
    assert "were replaced or edited since (same names and sizes, other pixels)" in line


def test_a_copy_that_did_not_keep_the_times_resumes_and_a_rename_is_called_one(bmp_run, tmp_path, capsys):
    """cp -r, scp: the same images with new mtimes were refused as 'replaced or edited'; a renamed file
    was called 'same names'."""
    data, out = bmp_run
    copy = tmp_path / "scratch"
    shutil.copytree(data, copy, copy_function=shutil.copyfile)  # contents only: new modification times
    os.utime(copy / "cat" / "img3.bmp", ns=(1, 1))
    assert main(["train", "--resume", str(out), "--data", str(copy), "--max-steps", "4"]) == 0
    capsys.readouterr()
    os.rename(copy / "cat" / "img3.bmp", copy / "cat" / "img3-renamed.bmp")
    run2 = tmp_path / "run"
    line = refused(capsys, run2, "--max-steps", "6")
    assert "(files of train were renamed since (as many per class, other names))" in line


def test_a_moved_folder_with_the_same_images_resumes_and_another_is_refused(run, tmp_path, capsys):
    data, out = run
    other = tmp_path / "other"
    shutil.copytree(data, other)
    _write(other / "dog" / "img8.png", COLOURS["dog"], (16, 16), tag="new")
    assert "train images per class were dog 6; now dog 7" in refused(capsys, out, "--data", str(other))
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    assert main(["train", "--resume", str(out), "--max-steps", "4"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"resnetlab train: error: the run's data folder {data} no longer exists; pass --data DIR, the folder where "
        "its images are now")
    assert main(["eval", str(out), "--split", "val"]) == 2
    assert "the run's data folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--data", str(moved), "--max-steps", "4"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt").training.step == 4
    assert load_config(str(out / "config.yaml")).data.root == str(moved)


def test_a_run_without_data_json_resumes_as_before(run, capsys):
    data, out = run
    (out / "data.json").unlink()
    _write(data / "cat" / "img8.png", COLOURS["cat"], (16, 16), tag="new")
    assert main(["train", "--resume", str(out), "--max-steps", "4"]) == 0


def test_eval_val_scores_the_recorded_hold_out_after_photos_were_added(run, capsys):
    data, out = run
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    before, err = capsys.readouterr()
    assert "warning" not in err
    _write(data / "cat" / "img8.png", COLOURS["cat"], (16, 16), tag="new")  # another hold-out would be drawn now
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    after, err = capsys.readouterr()
    assert "warning" not in err
    assert json.loads(before)["n"] == json.loads(after)["n"] == 6


def test_resume_of_a_missing_directory_or_with_another_out_is_one_line(run, tmp_path, capsys):
    _, out = run
    assert main(["train", "--resume", str(tmp_path / "nonexist")]) == 2
    assert capsys.readouterr().err.strip() == (f"resnetlab train: error: --resume {tmp_path / 'nonexist'}: no such "
                                               "directory; give the run directory a training wrote")
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"resnetlab train: error: --resume {out} continues that run in its own directory; drop --out "
        f"{tmp_path / 'other'} (to start a new run from its weights: --init {out} --out {tmp_path / 'other'})")
    assert not (tmp_path / "other").exists()


def test_records_of_older_runs_hold_one_digest_which_is_the_new_mtimes_one(bmp_run, capsys):
    """Runs before 2026-12-06 recorded a string per split: they resume on the same files, and are refused
    on edited ones, as before."""
    data, out = bmp_run
    record = json.loads((out / "data.json").read_text())
    record["fingerprints"] = {split: digests["mtimes"] for split, digests in record["fingerprints"].items()}
    (out / "data.json").write_text(json.dumps(record))
    stat = (data / "cat" / "img3.bmp").stat()
    os.utime(data / "cat" / "img3.bmp", ns=(1, 1))
    line = refused(capsys, out, "--max-steps", "4")
    assert "images of train were replaced or edited since (same names, other sizes or modification times)" in line \
        or "images of val were replaced or edited since (same names, other sizes or modification times)" in line
    os.utime(data / "cat" / "img3.bmp", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # back as recorded: the same files
    assert main(["train", "--resume", str(out), "--max-steps", "4"]) == 0


def test_eval_val_says_when_the_images_it_held_out_were_edited_since(bmp_run, capsys):
    """The recorded names were scored as they are now without a word, even when their pixels had changed."""
    data, out = bmp_run
    cat, dog = data / "cat" / "img3.bmp", data / "dog" / "img3.bmp"
    stat = cat.stat()
    cat.write_bytes(dog.read_bytes())
    os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    printed, err = capsys.readouterr()
    assert json.loads(printed)["n"] == 6 and err.count("warning") == 1
    assert "(images of train were replaced or edited since (same names and sizes, other pixels)): the images it " \
           "held out are scored as they are now" in err


def test_the_pixel_digest_is_of_the_arrays_values_however_they_lie_in_memory(monkeypatch):
    """It copied the whole in-memory dataset first (a permuted view): 15 GB for 64 px ImageNet."""
    import hashlib

    import numpy as np

    from resnetlab.data import fingerprints

    monkeypatch.setattr(fingerprints, "CHUNK_BYTES", 1000)  # many chunks
    images = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    strided = np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # same values, other layout
    expected = hashlib.sha256(images.tobytes()).hexdigest()
    assert fingerprints.fingerprint([], "/root", images)["pixels"] == expected
    assert fingerprints.fingerprint([], "/root", strided)["pixels"] == expected


def test_eval_val_says_nothing_of_a_test_split_edited_since(tmp_path, capsys):
    """The warning that the held-out images are scored as they are now came for any change, the test
    split's included, which the hold-out never draws from."""
    from PIL import Image
    for split, shift in (("train", 0), ("test", 8)):  # test's images are not train's
        uncompressed_photos(tmp_path / "splits" / split, shift=shift)
    data, out = trained_on(tmp_path / "splits", tmp_path, capsys)
    cat, dog = data / "test" / "cat" / "img3.bmp", data / "test" / "dog" / "img3.bmp"
    stat = cat.stat()
    cat.write_bytes(dog.read_bytes())
    os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert Image.open(cat).getpixel((0, 0)) == Image.open(dog).getpixel((0, 0))
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_other_pixels_from_another_decoder_are_said_to_be_that():
    """A resume on a machine with another Pillow (or after resnetlab's decoding rules changed) was
    told its images had been replaced or edited."""
    from resnetlab.data.fingerprints import fingerprint_changes

    then = {"names": "n", "sizes": "s", "mtimes": "m", "pixels": "p1", "decoder": "Pillow 11.0.0, resnetlab decoding v6"}
    assert fingerprint_changes({"train": then}, {"train": {**then, "pixels": "p2", "decoder": "Pillow 13.0.0, resnetlab "
                                                                                          "decoding v6"}}) == [
        "images of train decode to other pixels than when the run trained (same names and sizes; Pillow 11.0.0, "
        "resnetlab decoding v6 then, Pillow 13.0.0, resnetlab decoding v6 now)"]
    assert fingerprint_changes({"train": then}, {"train": {**then, "pixels": "p2"}}) == [
        "images of train were replaced or edited since (same names and sizes, other pixels)"]
