"""Parameter and multiply-add counts, with no dependency beyond torch.

Multiply-adds are counted the way the paper's Table 1 counts FLOPs: convolutions and the
fully connected layer (one multiply-add per weight per output position); BN, ReLU, pooling and
additions are left out. The forward pass runs on the meta device, so counting ResNet-152 costs
no memory and a few milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    input_size: int


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass of a single (in_chans, input_size, input_size) image."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inp, out):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += k * out.numel()  # out: (1, C_out, H, W)

    def linear_hook(module: nn.Linear, _inp, out):
        nonlocal total
        total += module.in_features * out.numel()

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return total


def profile(name: str, input_size: int | None = None, **kwargs) -> Profile:
    """Counts for a registered model at its native input size (224 or 32) unless given one."""
    from .registry import create_model, model_info

    size = input_size or model_info(name).input_size
    with torch.device("meta"):
        model = create_model(name, **kwargs).eval()
    return Profile(count_params(model), count_macs(model, size, kwargs.get("in_chans", 3)), size)
