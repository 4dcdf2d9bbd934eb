"""A deterministic synthetic dataset (any size and number of classes) for tests and benchmarks.

Each class has a smooth random colour pattern; an image is its class pattern plus noise, so a
small network can learn it (useful for end-to-end tests) and the content never depends on the
run's seed: the same (classes, size, split) always gives the same images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from resnetlab.errors import UserError

from .datasets import ArrayDataset
from .sampling import SYNTHETIC, generator

SPLITS = {"train": 0, "test": 1}


def synthetic(num_images: int, num_classes: int, size: int, split: str = "train") -> ArrayDataset:
    if num_images < 1 or num_classes < 1 or size < 1:
        raise UserError(f"synthetic data needs positive sizes, got {num_images} images, {num_classes} "
                        f"classes, {size}px (data.synthetic_size, data.synthetic_classes, data.image_size)")
    g = generator(SYNTHETIC, num_classes, size)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g, dtype=torch.float32)  # whatever torch's default dtype
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 255
    g = generator(SYNTHETIC, num_classes, size, SPLITS[split] + 1, num_images)
    labels = torch.randint(0, num_classes, (num_images,), generator=g)
    noise = torch.randn(num_images, 3, size, size, generator=g, dtype=torch.float32) * 40
    images = (patterns[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
    return ArrayDataset(images, labels, [f"class{c}" for c in range(num_classes)])
