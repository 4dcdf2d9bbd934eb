"""Batched augmentation: reference equality, crops inside the padded image, flip rate, views."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetlab.data.augment import EIGVAL, EIGVEC, crop_flip, lighting, multiscale_sides, resized_crops, ten_crop
from resnetlab.data.decode import center_box, rrc_box, scale_box, square_box
from resnetlab.data.sampling import generator


def _images(n, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_flip_matches_per_sample_reference():
    x = _images(64)
    padded = F.pad(x, (4, 4, 4, 4))
    idx = torch.randperm(64)[:40]
    out = crop_flip(padded, idx, 32, generator(7))
    g = generator(7)  # the same draws, in the documented order: dy, dx, flip
    dy, dx = torch.randint(0, 9, (40,), generator=g), torch.randint(0, 9, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    for k in range(40):
        ref = padded[idx[k], :, dy[k]:dy[k] + 32, dx[k]:dx[k] + 32]
        assert torch.equal(out[k], ref.flip(2) if flip[k] else ref)
    assert out.dtype == torch.uint8 and out.shape == (40, 3, 32, 32) and out.is_contiguous()


def test_crops_stay_inside_padding_and_flip_about_half():
    n = 2000
    x = torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)
    x[:, 0, :, :16] = 100  # left half of channel 0 marks orientation
    out = crop_flip(F.pad(x, (4, 4, 4, 4)), torch.arange(n), 32, generator(1))
    inside = out[:, 1] == 255  # image pixels; zeros are padding
    rows, cols = inside.any(2).sum(1), inside.any(1).sum(1)
    assert rows.min() >= 28 and cols.min() >= 28  # at most 4 px of padding on any side
    assert set((32 - rows).tolist()) == set(range(5))  # every vertical shift occurs
    # In a flipped crop the marked (value 100) columns sit on the right of the image columns.
    marked = (out[:, 0] == 100).any(1).float()
    image_cols = inside.any(1).float()
    pos = torch.arange(32.0)
    centre_marked = (marked * pos).sum(1) / marked.sum(1)
    centre_image = (image_cols * pos).sum(1) / image_cols.sum(1)
    flipped = (centre_marked > centre_image).float().mean().item()
    assert 0.45 < flipped < 0.55  # 2000 fair coins: 0.5 +- 0.011 (1 sd)


def test_same_generator_same_batch_and_different_seeds_differ():
    padded = F.pad(_images(100), (4, 4, 4, 4))
    idx = torch.arange(100)
    assert torch.equal(crop_flip(padded, idx, 32, generator(3, 1)), crop_flip(padded, idx, 32, generator(3, 1)))
    assert not torch.equal(crop_flip(padded, idx, 32, generator(3, 1)), crop_flip(padded, idx, 32, generator(3, 2)))


def test_lighting_adds_pca_offset_per_image():
    x = torch.full((8, 3, 4, 4), 128, dtype=torch.uint8)
    out = lighting(x, 0.1, generator(5))
    alpha = torch.randn(8, 3, generator=generator(5)) * 0.1
    expected = (128 + (EIGVEC @ (alpha * EIGVAL).T).T * 255).round().clamp(0, 255)
    assert torch.equal(out[:, :, 0, 0].float(), expected)
    assert (out == out[:, :, :1, :1]).all()  # one offset per image and channel
    assert torch.equal(lighting(x, 0.0, generator(5)), x)


def test_ten_crop_corners_centre_and_flips():
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    views = ten_crop(x, 4)
    assert len(views) == 10
    assert torch.equal(views[0], x[:, :, :4, :4]) and torch.equal(views[3], x[:, :, 2:, 4:])
    assert torch.equal(views[4], x[:, :, 1:5, 2:6])
    for a, b in zip(views[:5], views[5:]):
        assert torch.equal(b, a.flip(3))


def test_multiscale_sides_are_the_papers():
    assert multiscale_sides(224) == [224, 256, 384, 480, 640]
    assert multiscale_sides(32) == [32, 37, 55, 69, 91]


@pytest.mark.parametrize("w,h", [(500, 375), (300, 800), (256, 256)])
def test_crop_boxes_stay_inside_image(w, h):
    rng = np.random.default_rng(0)
    for _ in range(200):
        side = int(rng.integers(256, 481))
        for box in (scale_box(w, h, side, 224, *rng.random(2)), rrc_box(w, h, rng.random((10, 4))),
                    square_box(w, h)):
            l, t, r, b = box
            assert -1e-6 <= l < r <= w + 1e-6 and -1e-6 <= t < b <= h + 1e-6
        l, t, r, b = scale_box(w, h, side, 224, *rng.random(2))
        assert math.isclose((r - l) * side / min(w, h), 224)  # the window is 224 px after resizing
    l, t, r, b = center_box(w, h, 256, 224)
    # torchvision's integer geometry, not the exact centre: within half a resized pixel of it (tests/test_center_view.py)
    assert abs((l + r) / 2 - w / 2) <= 0.5 * w / int(256 * w / min(w, h)) + 1e-9
    assert math.isclose(r - l, 224 * w / (256 if w <= h else int(256 * w / h)))


def test_rrc_box_area_and_aspect_in_range():
    rng = np.random.default_rng(1)
    for _ in range(300):
        l, t, r, b = rrc_box(640, 480, rng.random((10, 4)))
        frac, aspect = (r - l) * (b - t) / (640 * 480), (r - l) / (b - t)
        square = (r - l) == (b - t) == 480  # the fallback
        assert square or (0.07 < frac <= 1.0 and 0.74 < aspect < 1.35)


def test_resized_crops_match_interpolate_and_flip():
    x = _images(4, size=8)
    whole = torch.tensor([[0.0, 0, 8, 8]] * 4)
    up = resized_crops(x, whole, 16, torch.zeros(4, dtype=torch.bool))
    ref = F.interpolate(x.float(), size=(16, 16), mode="bilinear", align_corners=False).round().to(torch.uint8)
    assert (up.int() - ref.int()).abs().max() <= 1  # float rounding of the sampling grid
    same = resized_crops(x, whole, 8, torch.tensor([True, False, True, False]))
    assert torch.equal(same[1], x[1]) and torch.equal(same[0], x[0].flip(2))
    quarter = resized_crops(x, torch.tensor([[4.0, 0, 8, 4]] * 4), 4, torch.zeros(4, dtype=torch.bool))
    assert torch.equal(quarter, x[:, :, :4, 4:])  # an integer window at its own size is a plain crop
