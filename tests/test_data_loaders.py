"""Loaders: determinism, resume in mid-epoch, sharding across ranks, worker count, views."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import FileDataset, LoaderSpec, build_data, describe, make_eval_loader, make_train_loader, synthetic
from resnetlab.data.augment import resize_batch
from resnetlab.data.loaders import epoch_image_size
from resnetlab.data.sampling import eval_batches, stratified_subset, train_batches
from resnetlab.errors import UserError

CFG = DataConfig(dataset="synthetic", val_size=0, synthetic_size=300)


@pytest.fixture(scope="module")
def data():
    return synthetic(300, 10, 32)


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_train_batches_shapes_dtypes_and_ranges(data):
    loader = make_train_loader(data, CFG, LoaderSpec(64), seed=0, epoch=0)
    batches = _collect(loader)
    assert len(loader) == len(batches) == 300 // 64
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (64, 3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (64,) and 0 <= y.min() and y.max() < 10


def test_same_seed_same_batches_other_epoch_differs(data):
    a = _collect(make_train_loader(data, CFG, LoaderSpec(50), seed=3, epoch=1))
    b = _collect(make_train_loader(data, CFG, LoaderSpec(50), seed=3, epoch=1))
    c = _collect(make_train_loader(data, CFG, LoaderSpec(50), seed=3, epoch=2))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


def test_start_batch_resumes_the_uninterrupted_epoch(data):
    full = _collect(make_train_loader(data, CFG, LoaderSpec(32), seed=5, epoch=4))
    resumed = _collect(make_train_loader(data, CFG, LoaderSpec(32), seed=5, epoch=4, start_batch=6))
    assert len(resumed) == len(full) - 6
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[6:], resumed))


def test_labels_follow_images(data):
    cfg = DataConfig(dataset="synthetic", augment="none", val_size=0)
    lookup = {data.images[i].numpy().tobytes(): int(data.labels[i]) for i in range(len(data))}
    for x, y in make_train_loader(data, cfg, LoaderSpec(30), seed=1):
        assert [lookup[img.numpy().tobytes()] for img in x] == y.tolist()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shares(world_size):
    shards = [train_batches(1000, 16, seed=0, epoch=2, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({s.shape for s in shards}) == 1 and shards[0].shape[0] == 1000 // (16 * world_size)
    seen = torch.cat([s.flatten() for s in shards])
    assert len(seen.unique()) == len(seen)  # no sample twice in one epoch
    assert len(seen) > 1000 - 16 * world_size  # only the tail of the permutation is dropped


def test_eval_shards_cover_every_sample_once():
    shards = [torch.cat(eval_batches(103, 10, rank=r, world_size=4)) for r in range(4)]
    assert sorted(torch.cat(shards).tolist()) == list(range(103))


def test_eval_views_and_counts(data):
    for protocol, count in (("center", 1), ("flip", 2), ("10crop", 10), ("multiscale", 5)):
        loader = make_eval_loader(data, CFG, LoaderSpec(128), protocol=protocol)
        seen = 0
        for views, y in loader:
            views = [getattr(v, "x", v) for v in views]  # multiscale: ViewGroups, here each the whole (square) batch
            assert len(views) == count and all(v.dtype == torch.uint8 and v.shape[0] == len(y) for v in views)
            seen += len(y)
        assert seen == 300
    views, _ = next(iter(make_eval_loader(data, CFG, LoaderSpec(8))))
    assert torch.equal(views[0], data.images[:8])  # centre view of CIFAR-sized data = the image
    views, _ = next(iter(make_eval_loader(data, CFG, LoaderSpec(8), protocol="flip")))
    assert torch.equal(views[0], data.images[:8]) and torch.equal(views[1], data.images[:8].flip(3))


def test_bad_arguments_are_user_errors(data):
    with pytest.raises(UserError, match="protocol"):
        make_eval_loader(data, CFG, LoaderSpec(8), protocol="5crop")
    with pytest.raises(UserError, match="start_batch"):
        make_train_loader(data, CFG, LoaderSpec(8), start_batch=1000)
    with pytest.raises(UserError, match="fewer than one batch"):
        make_train_loader(data, CFG, LoaderSpec(512))
    with pytest.raises(UserError, match="unknown data.augment 'autoaugment'"):
        make_train_loader(data, DataConfig(augment="autoaugment"), LoaderSpec(8))


@pytest.fixture(scope="module")
def large_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        w, h = int(rng.integers(90, 140)), int(rng.integers(90, 140))
        path = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return FileDataset(paths, torch.arange(12) % 3, ["a", "b", "c"])


@pytest.mark.parametrize("augment", ["imagenet", "rrc"])
def test_file_batches_same_with_and_without_workers(large_files, augment):
    cfg = DataConfig(dataset="folder", augment=augment, image_size=64, scale_min=72, scale_max=100)
    plain = _collect(make_train_loader(large_files, cfg, LoaderSpec(4), seed=2, epoch=1))
    workers = _collect(make_train_loader(large_files, cfg, LoaderSpec(4, workers=2), seed=2, epoch=1))
    resumed = _collect(make_train_loader(large_files, cfg, LoaderSpec(4), seed=2, epoch=1, start_batch=1))
    assert len(plain) == 3 and plain[0][0].shape == (4, 3, 64, 64) and plain[0][0].dtype == torch.uint8
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(plain, workers))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(plain[1:], resumed))


def test_workers_beyond_the_cores_are_not_started(large_files, monkeypatch):
    """finetune's workers: 8 on a 2-core machine started 8 processes (and torch warned for each loader);
    the batches do not depend on the number, so one per usable core is started."""
    import resnetlab.cpu

    started = []
    real = torch.utils.data.DataLoader

    def spy(*args, **kwargs):
        started.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    monkeypatch.setattr(resnetlab.cpu, "usable_cores", lambda: 1)
    cfg = DataConfig(dataset="folder", augment="imagenet", image_size=64, scale_min=72, scale_max=100)
    capped = _collect(make_train_loader(large_files, cfg, LoaderSpec(4, workers=8), seed=2, epoch=1))
    plain = _collect(make_train_loader(large_files, cfg, LoaderSpec(4), seed=2, epoch=1))
    assert started == [1] and all(torch.equal(p[0], q[0]) for p, q in zip(plain, capped))


def test_file_eval_views(large_files):
    cfg = DataConfig(dataset="folder", augment="imagenet", image_size=64, eval_resize=73)
    shapes = {"center": [(5, 3, 64, 64)], "flip": [(5, 3, 64, 64)] * 2, "10crop": [(5, 3, 64, 64)] * 10}
    for protocol, expected in shapes.items():
        views, y = next(iter(make_eval_loader(large_files, cfg, LoaderSpec(5), protocol=protocol)))
        assert [tuple(v.shape) for v in views] == expected and y.tolist() == [0, 1, 2, 0, 1]
        if protocol == "flip":
            center, _ = next(iter(make_eval_loader(large_files, cfg, LoaderSpec(5))))
            assert torch.equal(views[0], center[0]) and torch.equal(views[1], center[0].flip(3))
    groups, y = next(iter(make_eval_loader(large_files, cfg, LoaderSpec(5), protocol="multiscale")))  # whole images
    seen = sorted((r, min(g.x.shape[2:])) for g in groups for r in g.rows.tolist())
    assert seen == [(r, s) for r in range(5) for s in (64, 73, 110, 137, 183)] and y.tolist() == [0, 1, 2, 0, 1]


def test_build_data_val_split_is_deterministic_and_disjoint():
    cfg = DataConfig(dataset="synthetic", val_size=50, synthetic_size=200)
    a, b, c = build_data(cfg, seed=1), build_data(cfg, seed=1), build_data(cfg, seed=2)
    assert len(a.train) == 150 and len(a.val) == 50 and len(a.test) == 200
    assert describe(a) == "synthetic: train 150, val 50, test 200 images, 10 classes, 32x32 in memory, normalize=pixel"
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    train_rows = {img.numpy().tobytes() for img in a.train.images}
    assert not any(img.numpy().tobytes() in train_rows for img in a.val.images)
    with pytest.raises(UserError, match="val_size"):
        build_data(DataConfig(dataset="synthetic", val_size=200, synthetic_size=200))


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    a, b, c = (stratified_subset(labels, 25, s) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 25 and torch.equal(a, a.sort().values)
    # 25 * (0.6, 0.3, 0.1) = (15, 7.5, 2.5): floors 15/7/2, the one leftover seat to the first largest remainder
    assert torch.bincount(labels[a]).tolist() == [15, 8, 2]
    for bad in (0, 101):
        with pytest.raises(UserError, match="train_size"):
            stratified_subset(labels, bad, 0)


def test_build_data_train_size_subsets_train_after_the_val_split():
    full = build_data(DataConfig(dataset="synthetic", val_size=50, synthetic_size=200), seed=1)
    small = build_data(DataConfig(dataset="synthetic", val_size=50, synthetic_size=200, train_size=40), seed=1)
    assert len(small.train) == 40 and torch.equal(small.val.images, full.val.images)
    full_rows = {img.numpy().tobytes() for img in full.train.images}
    assert all(img.numpy().tobytes() in full_rows for img in small.train.images)
    expected = torch.bincount(full.train.labels, minlength=10) * 40 / 150
    assert (torch.bincount(small.train.labels, minlength=10) - expected).abs().max() < 1


def test_in_memory_images_are_resized_per_batch_to_image_size(data):
    cfg = DataConfig(dataset="synthetic", image_size=48)
    x, _ = next(iter(make_train_loader(data, cfg, LoaderSpec(16), seed=0)))
    assert x.shape == (16, 3, 48, 48) and data.images.shape[-1] == 32  # memory keeps 32 px
    for protocol, sides in (("center", [48]), ("10crop", [48] * 10), ("multiscale", [48, 55, 82, 103, 137])):
        views, _ = next(iter(make_eval_loader(data, cfg, LoaderSpec(4), protocol=protocol)))
        assert [getattr(v, "x", v).shape[-1] for v in views] == sides  # multiscale: ViewGroups


@pytest.mark.parametrize("augment", ["cifar", "none", "imagenet", "rrc"])
def test_progressive_scales_shrink_only_the_listed_epochs(data, large_files, augment):
    # An epoch at a smaller side is the same augmented batch resized: the same content (not a zoomed-in
    # window, not a larger relative shift), and the random draws do not depend on the side, so a
    # resumed run sees the batches it would have seen.
    extra = dict(image_size=64, scale_min=72, scale_max=100) if augment in ("imagenet", "rrc") else {}
    dataset = large_files if extra else data
    full = DataConfig(dataset="folder" if extra else "synthetic", augment=augment, val_size=0, **extra)
    progressive = replace(full, progressive_scales=[0.5, 0.7])  # 0.7 of 32 rounds to 22, of 64 to 45
    sides = [full.image_size // 2, round(0.7 * full.image_size), full.image_size]
    assert [epoch_image_size(progressive, e) for e in range(4)] == sides + [full.image_size]
    for epoch, expected in enumerate(sides):
        small = _collect(make_train_loader(dataset, progressive, LoaderSpec(4), seed=1, epoch=epoch))
        large = _collect(make_train_loader(dataset, full, LoaderSpec(4), seed=1, epoch=epoch))
        assert small[0][0].shape[-2:] == (expected, expected)
        assert all(torch.equal(p[1], q[1]) for p, q in zip(small, large))  # same images, same order
        assert all(torch.equal(p[0], resize_batch(q[0], expected)) for p, q in zip(small, large))
    resumed = _collect(make_train_loader(dataset, progressive, LoaderSpec(4), seed=1, epoch=1, start_batch=1))
    assert torch.equal(resumed[0][0], _collect(make_train_loader(dataset, progressive, LoaderSpec(4), seed=1, epoch=1))[1][0])
    for protocol in ("center", "flip"):  # evaluation always sees image_size
        views, _ = next(iter(make_eval_loader(dataset, progressive, LoaderSpec(4), protocol=protocol)))
        assert all(v.shape[-1] == full.image_size for v in views)


@pytest.mark.parametrize("augment", ["imagenet", "rrc"])
def test_in_memory_scale_and_rrc_augmentation(data, augment):
    cfg = DataConfig(dataset="synthetic", augment=augment, image_size=64, scale_min=70, scale_max=120)
    a = _collect(make_train_loader(data, cfg, LoaderSpec(32), seed=4, epoch=0))
    b = _collect(make_train_loader(data, cfg, LoaderSpec(32), seed=4, epoch=0, start_batch=2))
    assert a[0][0].shape == (32, 3, 64, 64) and a[0][0].dtype == torch.uint8
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a[2:], b))
