"""A folder of one's own photos: validation as a stratified fraction, DIR/<class>/ without a split
level, files that are not images, class counts and imbalance (sampler and loss weights)."""
import json

import pytest
import torch
from test_data_folders import COLOURS, _cfg, _tree, _write

from resnetlab.config import load_config
from resnetlab.data import LoaderSpec, build_data, make_train_loader
from resnetlab.data.sampling import balanced_draw, generator, holdout, split_indices, stratified_split, train_batches
from resnetlab.data.summary import data_record, imbalance_warning, loss_weights, notes
from resnetlab.errors import UserError

LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)  # shuffled below: order must not matter
LABELS = LABELS[torch.randperm(100, generator=torch.Generator().manual_seed(1))]


def test_a_fraction_holds_out_that_share_of_every_class_by_the_seed():
    train, val = stratified_split(LABELS, 0.2, seed=0)
    assert torch.bincount(LABELS[val]).tolist() == [10, 6, 3, 1] and len(train) + len(val) == 100
    assert set(train.tolist()).isdisjoint(val.tolist()) and torch.equal(val, val.sort().values)
    again, other = stratified_split(LABELS, 0.2, seed=0)[1], stratified_split(LABELS, 0.2, seed=1)[1]
    assert torch.equal(val, again) and not torch.equal(val, other)
    # largest remainder: 0.25 of (50, 30, 15, 5) = 12.5, 7.5, 3.75, 1.25 -> 25 seats: 13, 7, 4, 1 (ties by class order)
    assert torch.bincount(LABELS[stratified_split(LABELS, 0.25, seed=0)[1]]).tolist() == [13, 7, 4, 1]


def test_a_fraction_never_takes_a_class_s_last_training_image_and_a_count_is_the_old_split():
    labels = torch.tensor([0, 0, 0, 0, 1])
    train, val = stratified_split(labels, 0.4, seed=0)
    assert labels[val].tolist() == [0, 0] and 4 in train.tolist()  # class 1 keeps its only image
    with pytest.raises(UserError, match=r"data.val_size=0.2 of 2 training images holds out none"):
        stratified_split(torch.tensor([0, 1]), 0.2, seed=0)
    for a, b in zip(holdout(LABELS, 7, seed=3), split_indices(100, 7, seed=3)):  # counts: unchanged (runs repeat)
        assert torch.equal(a, b)


def test_val_size_is_a_count_or_a_fraction_in_config():
    assert load_config(None, ["data.val_size=0.2"]).data.val_size == 0.2
    assert load_config(None, ["data.val_size=5e3"]).data.val_size == 5000  # a whole float is a count
    for bad, words in (("1.5", "a fraction must be in (0, 1)"), ("-0.2", "out of range"), ("abc", "expected a number"),
                       ("true", "expected a number")):
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, [f"data.val_size={bad}"])
    with pytest.raises(UserError, match=r"data.balance='weights': expected one of none, sampler, loss"):
        load_config(None, ["data.balance=weights"])
    with pytest.raises(UserError, match=r"data.val_folder='dev': expected one of val, test"):
        load_config(None, ["data.val_folder=dev"])


def _photos(root, counts):
    """ROOT/<class>/ only, small PNGs, a stray text file in a class folder and one at the top."""
    for (name, colour), n in zip(COLOURS.items(), counts):
        for i in range(n):
            _write(root / name / f"{i}.png", colour, tag=f"{name}/{i}")  # one colour, its own bytes
    (root / "cat" / "notes.txt").write_text("not a photo")
    (root / "README").write_text("")
    return root


def test_a_folder_of_class_folders_is_the_training_set_and_its_record_lists_the_held_out_files(tmp_path):
    root = _photos(tmp_path / "photos", (10, 5, 2))
    bundle = build_data(_cfg(root, tmp_path, val_size=0.2), seed=0)
    assert bundle.classes == sorted(COLOURS) and bundle.test is None and bundle.provenance["layout"] == "classes"
    assert (len(bundle.train), len(bundle.val)) == (14, 3)  # round(0.2 * 17) = 3: cat 2, dog 1, emu 0 (2 * 0.2 = 0.35)
    assert bundle.provenance["ignored"] == ["README", "cat/notes.txt"]
    record = json.loads(json.dumps(data_record(bundle)))
    assert record["images_per_class"] == {"train": {"cat": 8, "dog": 4, "emu": 2}, "val": {"cat": 2, "dog": 1, "emu": 0}}
    held = record["validation"]
    assert held["images"] == 3 and held["val_size"] == 0.2 and held["from"] == "held out of train"
    assert sorted(f.split("/")[0] for f in held["files"]) == ["cat", "cat", "dog"]
    for name, img, label in zip(held["files"], bundle.val.images, bundle.val.labels):  # the files really held out
        assert bundle.classes[label] == name.split("/")[0] and tuple(img[:, 0, 0].tolist()) == COLOURS[name.split("/")[0]]
    lines = notes(bundle, "none")
    assert lines[0] == "images per class (train/val): cat 8/2, dog 4/1, emu 2/0"
    assert lines[-1] == "ignored 2 files that are not images (no extension 1, .txt 1): README, cat/notes.txt"


def test_imbalance_warns_above_5x_unless_balanced_and_loss_weights_are_balanced(tmp_path):
    bundle = build_data(_cfg(_photos(tmp_path / "p", (11, 4, 2)), tmp_path), seed=0)
    assert imbalance_warning(bundle, "none").startswith("imbalanced classes: 'cat' has 11 training images, 'emu' 2 (5.5x)")
    assert imbalance_warning(bundle, "sampler") is None
    assert imbalance_warning(build_data(_cfg(_photos(tmp_path / "q", (10, 4, 2)), tmp_path)), "none").startswith(
        "imbalanced classes: 'cat' has 10 training images, 'emu' 2 (5.0x)")  # one class 5x smaller: the case
    assert imbalance_warning(build_data(_cfg(_photos(tmp_path / "r", (9, 4, 2)), tmp_path)), "none") is None
    w = loss_weights(torch.tensor([0] * 6 + [1] * 3 + [2]), 3)
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))  # n / (classes * count)


def test_the_balanced_sampler_draws_every_class_equally_and_is_a_function_of_seed_and_epoch():
    draw = balanced_draw(LABELS, 40000, generator(9))
    share = torch.bincount(LABELS[draw]).double() / 40000
    assert torch.allclose(share, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)  # seeded: exact every run
    members = torch.bincount(draw[LABELS[draw] == 3], minlength=100)[LABELS == 3]  # the 5 images of class 3
    assert members.min() > 0.8 * members.double().mean()  # a uniform member of the class
    a = train_batches(100, 8, seed=4, epoch=2, balance_labels=LABELS)
    assert a.shape == (12, 8) and torch.equal(a, train_batches(100, 8, seed=4, epoch=2, balance_labels=LABELS))
    assert not torch.equal(a, train_batches(100, 8, seed=4, epoch=3, balance_labels=LABELS))
    ranks = [train_batches(100, 4, seed=4, epoch=2, rank=r, world_size=2, balance_labels=LABELS) for r in (0, 1)]
    assert torch.equal(torch.stack(ranks, -1).reshape(12, 8), a)  # dealt round-robin like the permutation


def test_a_balanced_loader_resumes_mid_epoch_with_the_same_batches(tmp_path):
    root = _photos(tmp_path / "p", (12, 3, 3))
    cfg = _cfg(root, tmp_path, balance="sampler")
    train = build_data(cfg).train
    full = list(make_train_loader(train, cfg, LoaderSpec(4), seed=1, epoch=1))
    resumed = list(make_train_loader(train, cfg, LoaderSpec(4), seed=1, epoch=1, start_batch=2))
    assert len(full) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], resumed))
    assert torch.bincount(torch.cat([y for _, y in full]), minlength=3).min() >= 3  # 16 draws, each class ~1/3


def test_split_folders_keep_their_roles_and_non_images_are_ignored_there_too(tmp_path):
    root = _tree(tmp_path / "d", splits=("train", "val", "test"))
    (root / "train" / "dog" / "Thumbs.db").write_bytes(b"\0")
    (root / "test" / "list.csv").write_text("a,b")
    bundle = build_data(_cfg(root, tmp_path, val_size=0.5))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 12, 12)
    assert bundle.provenance["ignored"] == ["train/dog/Thumbs.db", "test/list.csv"]


def test_the_data_command_takes_a_fraction_and_counts_ignored_files(tmp_path, capsys):
    from resnetlab.cli import main

    root = _photos(tmp_path / "p", (10, 5, 2))
    assert main(["data", str(root), "--val-size", "0.2", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("folder: train 14, val 3 images, 3 classes") and out.rstrip().endswith("2 other files ignored")
    with pytest.raises(SystemExit):  # 1.0 was a count of 1; 1 still is
        main(["data", str(root), "--val-size", "1.0", "--cache-dir", str(tmp_path / "cache")])
    assert "argument --val-size: '1.0': a count of 1 or the fraction 1 (every image)?" in capsys.readouterr().err
    assert main(["data", str(root), "--val-size", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.startswith("folder: train 16, val 1 images")



def test_a_count_never_holds_out_every_image_of_a_class():
    """data.val_size=5000 over 25k+ small images (the automatic recipe's) drew at random over all classes: a
    class of one image lost it to validation for some seeds and trained on nothing, without a word."""
    labels = torch.tensor([0] * 50 + [1] * 50 + [2])
    returned = 0
    for seed in range(30):
        keep, held = holdout(labels, 30, seed)
        drawn_keep, drawn_held = split_indices(101, 30, seed)
        assert sorted(keep.tolist() + held.tolist()) == list(range(101)) and (labels[keep] == 2).any()
        if (labels[drawn_held] == 2).any():  # the draw took the rare class whole: its image trains, 29 held out
            returned += 1
            assert torch.equal(held, drawn_held[drawn_held != 100]) and len(keep) == 72
        else:  # any other draw is as it was: runs repeat
            assert torch.equal(keep, drawn_keep) and torch.equal(held, drawn_held)
    assert returned > 0


def test_classes_the_hold_out_takes_no_image_of_are_named(tmp_path):
    """100 classes of 3 images at 0.2: 40 classes had no validation image and nothing said so (a val/ folder
    missing a class was warned about); the validation error, best.pt and the plateau went by the others."""
    import warnings

    from resnetlab.errors import ResnetlabWarning

    root = _photos(tmp_path / "photos", (10, 5, 1))  # the third class's one image is never held out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_data(_cfg(root, tmp_path, val_size=0.2), seed=0)
    said = [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning) and "holds out no" in str(w.message)]
    missing = [c for c, n in zip(bundle.classes, torch.bincount(bundle.val.labels, minlength=3).tolist()) if not n]
    assert missing == [list(COLOURS)[2]]
    assert said == [f"data.val_size=0.2 holds out no image of 1 of the 3 classes ({missing[0]}: too few images each), so "
                    "the validation error (and best.pt) goes by the other 2; add images to them, or give the folder a "
                    "val/ with every class"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_scoring_the_test_split_does_not_repeat_the_hold_out_warning(tmp_path, split):
    """`resnetlab eval RUN` (the test split) said which classes the hold-out took no image of, as the
    training had: about a split it does not score."""
    import warnings

    from resnetlab.config import apply_overrides
    from resnetlab.engine.evaluate import eval_data
    from resnetlab.errors import ResnetlabWarning

    root = tmp_path / "photos"
    _photos(root / "train", (10, 5, 1))
    _tree(root, per_class=2, splits=("test",))
    cfg = apply_overrides(load_config("cifar10_fast"), [("data.dataset", "folder"), ("data.root", str(root)),
                                                        ("data.cache_dir", str(tmp_path / "cache")), ("data.val_size", 0.2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset, _ = eval_data(cfg, None, split)
    said = [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning) and "holds out no" in str(w.message)]
    assert len(dataset) == (6 if split == "test" else 3)
    assert len(said) == (split == "val")
