"""Hostile and unlucky image folders through the command line: one line naming the file, exit 2;
with data.skip_bad the file is skipped and counted; predict lists it and exits 1."""
import pytest
from PIL import Image
from test_data_folders import huge_png

from resnetlab.cli import main


@pytest.fixture
def folder(tmp_path):
    """2 classes x 4 small PNGs, plus a 20000 x 20000 PNG header and a dangling symbolic link."""
    root = tmp_path / "data"
    for c, name in enumerate(("ant", "bee")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (100 * c, 50 * i, 0)).save(root / "train" / name / f"{i}.png")
    huge_png(root / "train" / "bee" / "huge.png")
    (root / "train" / "ant" / "gone.png").symlink_to(tmp_path / "deleted.png")
    return root


def _train(folder, out, *extra):
    return main(["train", "--recipe", "cifar10_resnet20", "--data", str(folder), "--out", str(out),
                 "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--precision", "fp32",
                 "--set", "model.name=resnet8", "--set", "data.val_size=0",
                 "--set", f"data.cache_dir={folder.parent / 'cache'}", *extra])


def test_train_names_the_bad_file_or_skips_and_counts_then_predict_lists_it(folder, tmp_path, capsys):
    assert _train(folder, tmp_path / "refused") == 2
    err = capsys.readouterr().err
    assert err == (f"resnetlab train: error: {folder}/train/ant/gone.png: dangling symbolic link (to {tmp_path}/deleted.png, "
                   "which does not exist); remove it or pass --set data.skip_bad=true to skip bad files with a count\n")
    (folder / "train" / "ant" / "gone.png").unlink()
    assert _train(folder, tmp_path / "refused2") == 2
    assert capsys.readouterr().err.startswith(f"resnetlab train: error: {folder}/train/bee/huge.png: refused as a "
                                              "possible decompression bomb (Image size (400000000 pixels) exceeds limit")
    (folder / "train" / "ant" / "gone.png").symlink_to(tmp_path / "deleted.png")

    assert _train(folder, tmp_path / "run", "--set", "data.skip_bad=true") == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == ("resnetlab train: warning: data.skip_bad: skipped 2 unreadable files (train/ant/gone.png, "
                                   f"train/bee/huge.png); `resnetlab data {folder} --skip-bad` lists every file with its reason")
    assert '"steps": 1' in out and "Traceback" not in err

    code = main(["predict", str(tmp_path / "run"), str(folder / "train" / "bee"), str(folder / "train" / "ant"),
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1 and len(out.splitlines()) == 8 and "FAILED" not in out
    assert err.splitlines() == [
        f"resnetlab predict: warning: skipped {folder}/train/bee/huge.png: refused as a possible decompression bomb "
        f"(Image size (400000000 pixels) exceeds limit of {2 * Image.MAX_IMAGE_PIXELS} pixels, could be decompression "
        "bomb DOS attack)",
        f"resnetlab predict: warning: skipped {folder}/train/ant/gone.png: no such file (a dangling symbolic link)"]


def test_each_command_names_its_own_option_for_skipping_bad_files_and_eval_skips_them(folder, tmp_path, capsys):
    """`data` and `eval` have no --set: their hint was "set data.skip_bad=true", which neither takes."""
    assert main(["data", str(folder), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == (f"resnetlab data: error: {folder}/train/ant/gone.png: dangling symbolic link (to "
                                       f"{tmp_path}/deleted.png, which does not exist); remove it or pass --skip-bad to "
                                       "skip bad files with a count\n")
    (folder / "train" / "ant" / "gone.png").unlink()
    (folder / "train" / "bee" / "huge.png").unlink()
    assert _train(folder, tmp_path / "run") == 0
    (folder / "test" / "ant").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (0, 50 * i, 0)).save(folder / "test" / "ant" / f"{i}.png")
    capsys.readouterr()
    (folder / "test" / "ant" / "3.png").write_text("not an image")
    evaluate = ["eval", str(tmp_path / "run"), "--data", str(folder / "test"), "--device", "cpu", "--json"]
    assert main(evaluate) == 2
    assert capsys.readouterr().err == (f"resnetlab eval: error: {folder}/test/ant/3.png: not an image Pillow can read; "
                                       "remove it or pass --skip-bad to skip bad files with a count\n")
    assert main(evaluate + ["--skip-bad"]) == 0
    out, err = capsys.readouterr()
    assert '"n": 3' in out and "skipped 1 unreadable file (ant/3.png)" in err


def test_skip_bad_on_photos_lists_and_counts_the_unreadable_files_before_training(tmp_path, capsys):
    # Photos (> 64 px) are decoded only while training; skip_bad leaves out the unreadable ones at the start,
    # as it does for small images: counted in the warning, listed in data.json, a class without images refused.
    import json
    root = tmp_path / "photos"
    for c, name in enumerate(("ant", "bee")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (80, 60), (100 * c, 50 * i, 0)).save(root / "train" / name / f"{i}.jpg")
    (root / "train" / "ant" / "fake.jpg").write_text("not an image")
    (root / "train" / "bee" / "empty.jpg").write_bytes(b"")
    huge_png(root / "train" / "bee" / "huge.png")
    assert _train(root, tmp_path / "run", "--set", "data.skip_bad=true") == 0
    err = capsys.readouterr().err
    assert "data.skip_bad: skipped 3 unreadable files (train/ant/fake.jpg, train/bee/empty.jpg, train/bee/huge.png)" in err
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert [s["path"] for s in record["skipped_files"]] == [str(root / "train" / f) for f in
                                                            ("ant/fake.jpg", "bee/empty.jpg", "bee/huge.png")]
    assert record["skipped_files"][0]["reason"] == "not an image Pillow can read"
    assert record["images_per_class"]["train"] == {"ant": 4, "bee": 4}

    (root / "train" / "cow").mkdir()
    for i in range(3):
        (root / "train" / "cow" / f"{i}.jpg").write_text("x")
    assert _train(root, tmp_path / "run2", "--set", "data.skip_bad=true") == 2
    assert f"class 'cow' has no readable training images ({root}/train/cow: 3 unreadable files skipped)" in \
        capsys.readouterr().err


def test_train_says_the_val_size_it_takes_as_its_own_option(folder, tmp_path, capsys):
    """train and experiment said "set data.val_size below 8", in the library's words."""
    (folder / "train" / "ant" / "gone.png").unlink()
    (folder / "train" / "bee" / "huge.png").unlink()
    assert _train(folder, tmp_path / "run", "--set", "data.val_size=8") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "resnetlab train: error: data.val_size=8 leaves no training images (train has 8); pass --set data.val_size=N "
        "with N below 8, or a fraction such as --set data.val_size=0.2 (0 = no validation split)")


def test_photos_met_unreadable_while_training_are_listed_in_data_json_and_stay_there_after_a_resume(tmp_path, capsys):
    # A photo's header is read before the run, its data only as it is decoded: a file cut short past its
    # header was counted in a warning but missing from data.json (and a resume's rewrite would drop it).
    import json
    import numpy as np
    root, rng = tmp_path / "photos", np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / split / name / f"{i}.jpg")
    for cut in (root / "train" / "ant" / "0.jpg", root / "test" / "bee" / "3.jpg"):
        cut.write_bytes(cut.read_bytes()[:700])  # header whole, scan data cut short
    run = tmp_path / "run"
    assert _train(root, run, "--set", "data.skip_bad=true", "--set", "train.test_protocol=center") == 0
    listed = lambda: {s["path"]: s["reason"] for s in json.loads((run / "data.json").read_text())["skipped_files"]}  # noqa: E731
    expected = {str(root / "train" / "ant" / "0.jpg"), str(root / "test" / "bee" / "3.jpg")}
    assert set(listed()) == expected
    assert all(reason.startswith("truncated") for reason in listed().values())
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "2"]) == 0
    assert set(listed()) == expected
    assert "skipped" not in capsys.readouterr().err  # known from the record, met again or not: no second warning


def test_photos_met_unreadable_before_a_stop_are_listed_at_once_and_follow_a_moved_folder(tmp_path, monkeypatch,
                                                                                        capsys):
    """A checkpoint inside an epoch (an evaluation, a SIGTERM) wrote data.json before the epoch's
    unreadable files reached it: a stop lost them. A resume with --data NEW_DIR dropped the ones before."""
    import json
    import os
    import shutil
    import signal

    import numpy as np

    import resnetlab.engine.train as engine_train
    root, rng, cut = tmp_path / "photos", np.random.default_rng(0), []
    for name in ("ant", "bee"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(8):
            path = root / "train" / name / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
            if i % 3 == 0:
                path.write_bytes(path.read_bytes()[:700])  # header whole, data cut short
                cut.append(f"train/{name}/{i}.jpg")
    real, steps = engine_train.train_step, []

    def step_then_sigterm(*args):
        steps.append(len(steps) + 1)
        if len(steps) == 4:  # the epoch's last batch: its generator is still open when the stop saves
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(engine_train, "train_step", step_then_sigterm)
    run = tmp_path / "run"
    assert _train(root, run, "--set", "data.skip_bad=true", "--set", "data.normalize=imagenet", "--max-steps", "8") == 143
    monkeypatch.undo()
    listed = lambda: {s["path"] for s in json.loads((run / "data.json").read_text())["skipped_files"]}  # noqa: E731
    assert listed() == {str(root / f) for f in cut}
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # times kept: the same photos
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(moved), "--max-steps", "5"]) == 0
    assert listed() == {str(moved / f) for f in cut} and "skipped" not in capsys.readouterr().err
