"""N processes train on the very images one process would: each sample's augmentation is drawn for
the global batch and follows the sample to whichever process gets it (`sampling.BatchDraws`)."""
import pytest
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import FileDataset, LoaderSpec, make_train_loader, synthetic
from resnetlab.data.augment import crop_flip, lighting
from resnetlab.data.sampling import BatchDraws, batch_draws, generator

AUGMENTS = {"cifar": {}, "imagenet": {"scale_min": 40, "scale_max": 56, "lighting": 0.1},
            "rrc": {"lighting": 0.1}, "none": {}}


def _images_by_sample(dataset, cfg, batch_size, rank=0, world_size=1, epoch=1):
    """[{dataset index: augmented image}] per step of this process."""
    spec = LoaderSpec(batch_size, rank=rank, world_size=world_size)
    loader = make_train_loader(dataset, cfg, spec, seed=7, epoch=epoch)
    unreadable = {k for k, path in enumerate(getattr(dataset, "paths", [])) if "bad" in path}
    steps = []
    for idx, (x, _) in zip(loader.batches, loader):
        present = [int(k) for k in idx if int(k) not in unreadable]
        assert len(present) == len(x)
        steps.append(dict(zip(present, x)))
    return steps


def _merged(dataset, cfg, batch_size, world_size):
    per_rank = [_images_by_sample(dataset, cfg, batch_size // world_size, r, world_size) for r in range(world_size)]
    return [{k: v for rank in step for k, v in rank.items()} for step in zip(*per_rank)]


def _assert_same(one, many):
    assert len(one) == len(many) > 1
    for a, b in zip(one, many):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """36 photo files of different sizes, two of them unreadable."""
    root = tmp_path_factory.mktemp("photos")
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(36):
        path = root / (f"bad{i}.jpg" if i in (5, 22) else f"img{i}.png")
        if i in (5, 22):
            path.write_bytes(b"not an image")
        else:
            w, h = 40 + i, 48 + (i * 7) % 20
            Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()).save(path)
        paths.append(str(path))
    return FileDataset(paths, torch.arange(36) % 3, ["a", "b", "c"], warn_bad=False)


@pytest.mark.parametrize("augment", sorted(AUGMENTS))
@pytest.mark.parametrize("world_size", [2, 4])
def test_processes_see_the_images_one_process_sees_in_memory(augment, world_size):
    cfg = DataConfig(dataset="synthetic", val_size=0, augment=augment, image_size=32, **AUGMENTS[augment])
    data = synthetic(200, 10, 40)
    one = _images_by_sample(data, cfg, 32)
    _assert_same(one, _merged(data, cfg, 32, world_size))
    if augment != "none":  # the draws are not the same for every sample: augmentation happened
        plain = _images_by_sample(data, DataConfig(dataset="synthetic", val_size=0, augment="none", image_size=32), 32)
        assert any(not torch.equal(one[0][k], plain[0][k]) for k in one[0])


@pytest.mark.parametrize("augment", sorted(AUGMENTS))
def test_processes_see_the_images_one_process_sees_from_files_bad_ones_skipped(photos, augment):
    cfg = DataConfig(dataset="folder", val_size=0, augment=augment, image_size=32, skip_bad=True, **AUGMENTS[augment])
    one = _images_by_sample(photos, cfg, 12)
    assert sum(len(step) for step in one) < 36  # a bad file fell in a batch and was skipped
    _assert_same(one, _merged(photos, cfg, 12, 2))


def test_one_process_draws_what_the_batch_generator_draws():
    """One process's draws are the generator's own, as every run before BatchDraws made them."""
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    draws = batch_draws((3, 1, 0, 1), 5, 6)
    assert torch.equal(crop_flip(x, torch.arange(6), 8, draws), crop_flip(x, torch.arange(6), 8, generator(2, 3, 1, 5, 0)))
    assert torch.equal(lighting(x, 0.1, batch_draws((3, 1, 0, 1), 5, 6)), lighting(x, 0.1, generator(2, 3, 1, 5, 0)))


def test_draws_are_cut_to_this_process_and_its_kept_samples():
    full = torch.rand(12, 2, generator=generator(9))
    draws = BatchDraws(generator(9), 4, rank=1, world_size=3)
    assert torch.equal(draws.rand(2), full[1::3])
    kept = BatchDraws(generator(9), 4, rank=1, world_size=3).kept(torch.tensor([0, 3]))
    assert len(kept) == 2 and torch.equal(kept.rand(2), full[1::3][[0, 3]])
    with pytest.raises(ValueError, match="draws for 2 samples given for a batch of 4"):
        crop_flip(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 4, kept)
