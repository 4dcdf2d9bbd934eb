"""Images shared between splits (a test/ that is train/, a val/ copied from train/, byte-identical
copies across the hold-out), class folders equal but for case, and what the ignored-files line
says of a file beside the class folders."""
import json
import shutil
import warnings

from test_data_folders import COLOURS, _cfg, _tree, _write

from resnetlab.data import build_data, overlap
from resnetlab.data.summary import data_record, notes
from resnetlab.errors import ResnetlabWarning


def _said(cfg) -> tuple[list[str], object]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_data(cfg)
    return [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning)], bundle


def test_a_test_folder_that_links_to_train_is_said_to_be_train(tmp_path):
    root = _tree(tmp_path / "d", splits=("train",))
    (root / "test").symlink_to("train")
    said, bundle = _said(_cfg(root, tmp_path))
    assert said == ["test/ is train/ (the same 12 files: a symbolic link?): its score is a training score, not a test "
                    "score; give test/ images of its own"]
    assert data_record(bundle)["overlap"] == {"train/test": {"images": 12, "of": 12, "same_file": 12, "identical": 0}}
    said, _ = _said(_cfg(root, tmp_path, val_size=0.25))  # with a hold-out, test/ is train's kept and held-out images
    assert said == ["test/ is train/ (the same 12 files: a symbolic link?): its score is a training score, not a test "
                    "score; give test/ images of its own"]


def test_a_val_folder_copied_from_train_is_said_to_be_a_copy(tmp_path):
    root = _tree(tmp_path / "d", splits=("train", "test"))
    shutil.copytree(root / "train", root / "val")
    said, bundle = _said(_cfg(root, tmp_path))
    assert len(said) == 1 and said[0].startswith(
        "val/ is a copy of train/ (val/cat/0.png = train/cat/0.png, val/cat/1.png = train/cat/1.png, ...): its score "
        "is a training score, not a validation score")
    assert bundle.provenance["overlap"]["train/val"] == {"images": 12, "of": 12, "same_file": 0, "identical": 12}
    assert bundle.provenance["overlap"]["train/test"]["identical"] == 0  # same pixels, other bytes: not found


def test_byte_identical_copies_across_the_hold_out_are_counted_with_examples(tmp_path):
    root = tmp_path / "p"
    for name, colour in COLOURS.items():
        for i in range(10):
            _write(root / name / f"{i}.png", colour, tag=f"{name}{i}")
        for i in range(3):  # three copies of 0.png in each class
            shutil.copy(root / name / "0.png", root / name / f"copy{i}.png")
    said, bundle = _said(_cfg(root, tmp_path, val_size=0.3))
    files = bundle.provenance["validation"]["files"]
    names = [f"{i}.png" for i in range(10)] + [f"copy{i}.png" for i in range(3)]
    everything = [f"{c}/{n}" for c in COLOURS for n in names]
    kept = [f for f in everything if f not in files]
    copy = lambda f: f.endswith("/0.png") or "/copy" in f  # noqa: E731  (one file's bytes, 4 times per class)
    expected = sum(1 for f in files if copy(f) and any(copy(k) and k[:4] == f[:4] for k in kept))
    assert expected  # seed 0 holds out some of the copies, and keeps others
    assert bundle.provenance["overlap"] == {"train/val": {"images": len(files), "of": len(kept), "same_file": 0,
                                                          "identical": expected}}
    assert len(said) == 1 and said[0].startswith(
        f"{expected} of {len(files)} validation images (held out of train) are also training images ({expected} "
        "byte-identical: ")
    assert said[0].endswith("their validation error is partly a training error; remove them from one side")


def test_only_files_whose_size_occurs_in_the_other_split_are_read(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / f"{i}.bin").write_bytes(bytes([i]) * (100 * (i + 1) + (0 if split == "train" else 7)))
    (root / "test" / "same.bin").write_bytes((root / "train" / "5.bin").read_bytes())  # 600 bytes, as train/5.bin
    (root / "test" / "other.bin").write_bytes(b"x" * 5000 + b"y")  # 5001 bytes, as train/big.bin, other bytes
    (root / "train" / "big.bin").write_bytes(b"x" * 5001)
    read = []
    real = overlap._digest
    monkeypatch.setattr(overlap, "_digest", lambda path, limit, kept: read.append(path) or real(path, limit, kept))
    files = {split: sorted(str(p) for p in (root / split).iterdir()) for split in ("train", "test")}
    found = overlap.split_overlap(files)["train/test"]
    assert (found["identical"], found["same_file"], found["images"]) == (1, 0, 5)
    assert {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in read} == {
        "test/same.bin", "train/5.bin", "test/other.bin", "train/big.bin"}  # no other file is opened
    assert found["examples"] == [(str(root / "test" / "same.bin"), str(root / "train" / "5.bin"))]


def test_class_folders_equal_but_for_case_are_warned_about(tmp_path):
    root = tmp_path / "p"
    for name, colour in (("cat", (200, 0, 0)), ("Cat", (190, 0, 0)), ("dog", (0, 200, 0))):
        for i in range(3):
            _write(root / name / f"{i}.png", colour, tag=f"{name}{i}")
    said, bundle = _said(_cfg(root, tmp_path))
    assert bundle.classes == ["Cat", "cat", "dog"]
    assert said == ["class folders Cat/ and cat/ differ only by case: they are 2 classes here (and cannot both exist "
                    "on macOS or Windows); if they are one class, merge them into one folder"]


def test_an_image_beside_the_class_folders_is_named_an_image_outside_any_class_folder(tmp_path):
    root = tmp_path / "p"
    for name, colour in COLOURS.items():
        for i in range(3):
            _write(root / name / f"{i}.png", colour, tag=f"{name}{i}")
    _write(root / "stray.png", (1, 2, 3))
    (root / "README.md").write_text("my photos")
    (root / "cat" / "notes.txt").write_text("")
    lines = notes(build_data(_cfg(root, tmp_path)), "none")
    assert lines[-1] == ("ignored 1 image outside any class folder (stray.png; to train on it, move it into its class "
                         "folder); 2 files that are not images (.md 1, .txt 1): README.md, cat/notes.txt")
    splits = _tree(tmp_path / "s", splits=("train",))
    _write(splits / "train" / "a.png", (1, 2, 3))
    (splits / "train" / "dog" / "Thumbs.db").write_bytes(b"\0")
    lines = notes(build_data(_cfg(splits, tmp_path)), "none")
    assert lines[-1] == ("ignored 1 image outside any class folder (train/a.png; to train on it, move it into its "
                         "class folder); 1 file that is not an image (.db 1): train/dog/Thumbs.db")


def test_the_data_command_records_the_overlap(tmp_path, capsys):
    from resnetlab.cli import main

    root = _tree(tmp_path / "d", splits=("train",))
    (root / "test").symlink_to("train")
    assert main(["data", str(root), "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["overlap"]["train/test"]["same_file"] == 12
    assert err.startswith("resnetlab data: warning: test/ is train/ (the same 12 files: a symbolic link?)")
