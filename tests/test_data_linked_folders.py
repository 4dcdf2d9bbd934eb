"""Linked subfolders inside a class folder: counted like the folder's own images (predict reads them
too), each real folder once, whatever links lead to it, and a link loop ends."""
import os

from test_data_folders import _cfg, _write

from resnetlab.data import build_data
from resnetlab.data.folder import scan


def _class(folder, n, colour, tag):
    for i in range(n):
        _write(folder / f"{i}.png", colour, tag=f"{tag}{i}")


def _per_class(root):
    found = scan(root, None, skip_bad=False)
    return {name: found.labels.tolist().count(i) for i, name in enumerate(found.classes)}, found


def test_a_linked_subfolder_is_counted_with_its_class(tmp_path):
    root = tmp_path / "ds"
    _class(root / "a", 4, (200, 0, 0), "a")
    _class(root / "b", 10, (0, 200, 0), "b")
    _class(tmp_path / "elsewhere" / "ext_part", 10, (201, 0, 0), "ext")
    (root / "a" / "part1").symlink_to(tmp_path / "elsewhere" / "ext_part")
    counts, found = _per_class(root)
    assert counts == {"a": 14, "b": 10} and found.ignored == []
    assert str(root / "a" / "part1" / "9.png") in found.paths
    bundle = build_data(_cfg(root, tmp_path))  # training reads them too, labelled a
    assert len(bundle.train) == 24
    assert sorted(tuple(img[:, 0, 0].tolist()) for img, label in zip(bundle.train.images, bundle.train.labels)
                  if bundle.classes[label] == "a") == [(200, 0, 0)] * 4 + [(201, 0, 0)] * 10


def test_a_link_loop_to_an_ancestor_ends_and_counts_each_image_once(tmp_path):
    root, ext = tmp_path / "ds", tmp_path / "elsewhere" / "ext"
    _class(root / "a", 3, (200, 0, 0), "a")
    _class(root / "a" / "sub", 2, (200, 0, 0), "sub")
    _class(root / "b", 4, (0, 200, 0), "b")
    _class(ext / "deeper", 6, (201, 0, 0), "ext")
    (root / "a" / "sub" / "up").symlink_to("..")  # back to the class folder
    (root / "a" / "sub" / "self").symlink_to(".")
    (root / "a" / "linked").symlink_to(ext)
    (ext / "deeper" / "up").symlink_to("..")  # an ancestor met through a link: a loop all the same
    (ext / "back").symlink_to(root / "a")
    (ext / "top").symlink_to(root)  # the dataset: b's images are not a's
    (root / "a" / "b_too").symlink_to(root / "b")  # b is a class of its own
    _class(tmp_path / "elsewhere" / "c", 2, (0, 0, 200), "c")
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c")  # a linked class folder: its real parents are its own
    (tmp_path / "elsewhere" / "c" / "up").symlink_to("..")  # which holds ext/, a's
    counts, found = _per_class(root)
    assert counts == {"a": 11, "b": 4, "c": 2}
    assert len(set(map(os.path.realpath, found.paths))) == len(found.paths) == 17


def test_two_links_to_one_folder_count_it_once(tmp_path):
    root = tmp_path / "ds"
    _class(root / "a", 2, (200, 0, 0), "a")
    _class(root / "b", 2, (0, 200, 0), "b")
    _class(tmp_path / "shared", 5, (201, 0, 0), "shared")
    for link in ("first", "second"):
        (root / "a" / link).symlink_to(tmp_path / "shared")
    _class(root / "b" / "own", 3, (0, 201, 0), "own")
    (root / "b" / "alias").symlink_to("own")  # sorts before own/: the folder's own path still names it
    counts, found = _per_class(root)
    assert counts == {"a": 7, "b": 5}
    assert [p for p in found.paths if "shared" in os.path.realpath(p)] == [
        str(root / "a" / "first" / f"{i}.png") for i in range(5)]
    assert not any("/alias/" in p for p in found.paths)
