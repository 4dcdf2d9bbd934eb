"""The evaluation view is torchvision's Resize(side) + CenterCrop(size), to the pixel (its published
weights' reference preprocessing): the longer side truncated, the window at int(round(slack / 2))."""
import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data.augment import ten_crop
from resnetlab.data.decode import center_box, decode_crops, resized_shape


def _torchvision_view(img: Image.Image, side: int, size: int, resample) -> np.ndarray:
    """torchvision.transforms.functional resize(img, side) then center_crop(size), written out for PIL images."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(side * long / short)
    rw, rh = (side, new_long) if w <= h else (new_long, side)
    resized = img.resize((rw, rh), resample)
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((w, h), Image.BICUBIC)  # smooth with edges, like a photo


@pytest.mark.parametrize("w, h, side, size", [(500, 375, 256, 224), (375, 500, 256, 224), (257, 256, 256, 224),
                                              (500, 333, 256, 224), (640, 480, 37, 32), (1024, 683, 73, 64),
                                              (300, 200, 256, 224)])
@pytest.mark.parametrize("interpolation, resample", [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_the_centre_view_is_torchvisions_to_the_pixel(w, h, side, size, interpolation, resample):
    img = _photo(w, h)
    view, = decode_crops(img, lambda w, h: [(center_box(w, h, side, size), (size, size))], interpolation)
    reference = _torchvision_view(img, side, size, resample).astype(int)
    assert np.abs(view.astype(int) - reference).max() <= 1  # one resample of a box vs resize then crop: rounding


def test_resized_shape_truncates_the_longer_side_as_torchvision():
    assert resized_shape(500, 375, 256) == (341, 256) and resized_shape(375, 500, 256) == (256, 341)
    assert resized_shape(1920, 1080, 256) == (455, 256)  # 455.1
    assert resized_shape(299, 200, 256) == (382, 256)  # 382.72: torchvision truncates, rounding made 383


def test_ten_crop_centre_is_torchvisions_offset():
    """(h - s) // 2 was a pixel short where the slack is 3 mod 4: 259 - 224 = 35 -> 18 (17.5 rounds to even)."""
    x = torch.arange(259 * 263, dtype=torch.float32).view(1, 1, 259, 263)
    centre = ten_crop(x, 224)[4]
    assert torch.equal(centre, x[:, :, 18:242, 20:244])  # int(round(17.5)) = 18, int(round(19.5)) = 20
