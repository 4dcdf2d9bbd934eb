"""Normalisation of uint8 batches into the float input the network sees, fitted on train only.

kinds:
- "pixel": x/255 minus the per-pixel mean image of the training split (He et al. Sec. 4.2, after
  Krizhevsky et al.); no division. The mean image is stored at the training crop size and
  resized (bilinear) to whatever size is fed, e.g. the larger multi-scale test views.
- "channel": (x/255 - mean_c) / std_c with per-channel statistics of the training split.
- "imagenet": fixed per-channel ImageNet statistics (what torchvision-trained weights expect).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UserError

KINDS = ("pixel", "channel", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalizer(nn.Module):
    """uint8 (B, 3, H, W) -> float32 normalised; mean (3, h, w) or (3, 1, 1), std (3, 1, 1)."""

    def __init__(self, kind: str, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if kind not in KINDS:
            raise UserError(f"unknown data.normalize {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        mean = mean.detach().float()
        mean = mean.reshape(3, 1, 1) if mean.numel() == 3 else mean.reshape(3, *mean.shape[-2:])
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.detach().float().reshape(3, 1, 1).clone())
        self._resized: dict = {}  # (h, w, device) -> mean image resized to that size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * (1 / 255) - self._mean_for(x)) / self.std

    def _mean_for(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.mean.shape[-2:] in ((1, 1), (h, w)):
            return self.mean
        key = (h, w, self.mean.device, self.mean.data_ptr())
        if key not in self._resized:
            self._resized = {key: F.interpolate(self.mean[None], size=(h, w), mode="bilinear",
                                                align_corners=False)[0]}
        return self._resized[key]

    def state(self) -> dict:
        """Plain-dict state for checkpoints and run directories."""
        return {"kind": self.kind, "mean": self.mean.cpu().clone(), "std": self.std.cpu().clone()}

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        try:
            made = cls(state["kind"], torch.as_tensor(state["mean"]), torch.as_tensor(state["std"]))
        except (KeyError, TypeError, RuntimeError) as err:
            raise UserError(f"normalizer state is malformed ({err}); expected keys kind, mean, std") from None
        # no fit makes these: a zero or NaN std gave NaN probabilities (fp32), plausible wrong ones (bf16)
        if not (torch.isfinite(made.mean).all() and torch.isfinite(made.std).all() and (made.std > 0).all()):
            raise UserError(f"normalizer state holds a mean or std no training makes (std {made.std.flatten().tolist()}): "
                            "the file is damaged or was edited")
        return made

    @classmethod
    def fit(cls, kind: str, batches: Iterable[torch.Tensor]) -> "Normalizer":
        """Statistics of uint8 batches (B, 3, H, W) of one size."""
        if kind not in KINDS:
            raise UserError(f"unknown data.normalize {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "imagenet":
            return cls(kind, torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))
        total, total_sq, count = 0, 0, 0  # exact integer sums of the raw uint8 values
        for x in batches:
            total = total + x.sum(0, dtype=torch.int64)
            if kind == "channel":
                wide = x.to(torch.int32)
                total_sq = total_sq + (wide * wide).sum((0, 2, 3), dtype=torch.int64)
            count += x.shape[0]
        if count == 0:
            raise UserError("cannot fit the normaliser: the training split is empty")
        total, total_sq = total.double() / 255, torch.as_tensor(total_sq).double() / 255**2  # [0, 1] units
        mean_image = total / count  # (3, H, W)
        if kind == "pixel":
            return cls(kind, mean_image, torch.ones(3))
        pixels = count * mean_image.shape[1] * mean_image.shape[2]
        mean_c = mean_image.mean((1, 2))
        std_c = (total_sq / pixels - mean_c**2).clamp_min(1e-12).sqrt()
        return cls(kind, mean_c, std_c)
