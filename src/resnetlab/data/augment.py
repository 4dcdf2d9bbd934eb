"""Batched augmentation and evaluation views on uint8 tensors (CPU or GPU), no per-sample loops.

Random parameters are drawn on the CPU from the batch's own generator, or its `BatchDraws` (see
`sampling`: one row per sample, whatever the number of processes), and then moved to the images'
device, so every device makes the same draws (crops and flips are then bit-identical; resampling
may differ by float rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decode import center_offset
from .sampling import BatchDraws, as_draws

# AlexNet PCA lighting (Krizhevsky et al. 2012): eigen-decomposition of ImageNet RGB covariance,
# pixels in [0, 1]; the constants used by fb.resnet.torch, the ResNet authors' reference code.
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])
# He et al. Sec. 3.4 / Table 3 multi-scale testing: shorter side in these sizes (for 224 crops).
MULTISCALE_SIDES = (224, 256, 384, 480, 640)


def crop_flip(padded: torch.Tensor, idx: torch.Tensor, size: int, gen: torch.Generator | BatchDraws) -> torch.Tensor:
    """Random size x size crops with random horizontal flips of padded[idx]: (B, 3, size, size).

    `padded` holds the (already zero-padded) images, (N, C, Hp, Wp). An as_strided view lists
    every window of every image, so one advanced-indexing gather does the crop for the batch.
    """
    n, c, hp, wp = padded.shape
    draws = as_draws(gen, idx.shape[0])
    dy, dx = draws.randint(hp - size + 1), draws.randint(wp - size + 1)
    flip = draws.rand() < 0.5
    s = padded.stride()
    windows = padded.as_strided((n, hp - size + 1, wp - size + 1, c, size, size),
                                (s[0], s[2], s[3], s[1], s[2], s[3]))
    dev = padded.device
    out = windows[idx.to(dev), dy.to(dev), dx.to(dev)]  # (B, C, size, size), a copy
    return _flip_where(out, flip.to(dev))


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Per-image windows boxes (B, 4: left, top, right, bottom in pixels) of a uint8 batch, each
    resized to size x size and mirrored where flip (B,) is set, in one batched bilinear
    grid_sample. No antialiasing: meant for small in-memory images, which this enlarges."""
    b, _, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    theta = torch.zeros(b, 2, 3, device=x.device)
    sx = (boxes[:, 2] - boxes[:, 0]) / w  # half-width of the window in [-1, 1] units
    theta[:, 0, 0] = torch.where(flip.to(x.device), -sx, sx)
    theta[:, 0, 2] = (boxes[:, 0] + boxes[:, 2]) / w - 1  # window centre
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / h
    theta[:, 1, 2] = (boxes[:, 1] + boxes[:, 3]) / h - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_flip(x: torch.Tensor, gen: torch.Generator | BatchDraws) -> torch.Tensor:
    """Horizontally flip each image of the batch with probability 1/2, in place; returns x."""
    flip = as_draws(gen, x.shape[0]).rand() < 0.5
    return _flip_where(x, flip.to(x.device))


def _flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    if flip.any():
        x[flip] = x[flip].flip(3)
    return x


def lighting(x: torch.Tensor, std: float, gen: torch.Generator | BatchDraws) -> torch.Tensor:
    """AlexNet-style PCA colour noise on a uint8 batch: each image gets the RGB offset
    EIGVEC @ (alpha * EIGVAL), alpha ~ N(0, std^2), in 0..255 units, rounded, then clamped.
    (Rounding the offset first equals rounding the sum, as pixels are integers; int16 is cheap.)"""
    alpha = as_draws(gen, x.shape[0]).randn(3) * std
    rgb = ((alpha * EIGVAL) @ EIGVEC.T * 255.0).round().to(torch.int16)  # (B, 3)
    shifted = x.to(torch.int16) + rgb.to(x.device)[:, :, None, None]
    return shifted.clamp_(0, 255).to(torch.uint8)


def ten_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The 4 corner and the centre size x size crops of a batch, then the same 5 flipped."""
    h, w = x.shape[2:]
    top, left = center_offset(h, size), center_offset(w, size)  # torchvision's, as the centre view's
    crops = [x[:, :, :size, :size], x[:, :, :size, w - size:], x[:, :, h - size:, :size],
             x[:, :, h - size:, w - size:], x[:, :, top:top + size, left:left + size]]
    crops = [c.contiguous() for c in crops]
    return crops + [c.flip(3) for c in crops]


def multiscale_sides(image_size: int) -> list[int]:
    """The paper's test scales {224, 256, 384, 480, 640}, scaled to the training crop size."""
    return [round(s * image_size / 224) for s in MULTISCALE_SIDES]


def resize_batch(x: torch.Tensor, side: int | tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 batch to side x side, or to side = (h, w) (antialiased bilinear)."""
    size = (side, side) if isinstance(side, int) else tuple(side)
    if x.shape[2:] == size:
        return x
    y = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)
