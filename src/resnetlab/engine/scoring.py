"""A model's mean softmax over each image's views of an evaluation batch, for eval and predict alike."""
from __future__ import annotations

import torch
from torch import nn

from resnetlab.data.views import mean_over_views

from .runtime import Runtime, autocast, to_input


@torch.no_grad()
def predict_views(model: nn.Module, normalizer: nn.Module, views: list, rt: Runtime) -> torch.Tensor:
    """Mean softmax over each image's views of a batch -> (B, num_classes) float32. views: uint8
    (B, 3, H, W) tensors, or multi-scale ViewGroups (data/views.py)."""
    def softmax(x: torch.Tensor) -> torch.Tensor:
        with autocast(rt):
            logits = model(to_input(normalizer(x), rt))
        return logits.float().softmax(dim=1)

    return mean_over_views(views, softmax)
