"""Parameter and multiply-add counts, with no dependency beyond torch.

Multiply-adds are counted the way the paper's Table 1 counts FLOPs: convolutions and the
fully connected layer (one multiply-add per weight per output position); BN, ReLU, pooling and
additions are left out. `count_macs` measures any module with a forward pass (torch's
FlopCounterMode, on the meta device: no memory); `resnet_macs` computes the same number for our
ResNet class from the layer shapes alone, which keeps `resnetlab models` instant; a test holds
the two equal for every registered model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.errors import expect_count, expect_type


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    input_size: int


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one forward pass of a single (in_chans, input_size, input_size) image, as
    torch's FlopCounterMode measures them: it counts the convolutions and matrix products only
    (2 FLOPs per multiply-add, biases left out), which is the paper's count."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    return counter.get_total_flops() // 2


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_macs(conv: nn.Conv2d, out_size: int) -> int:
    per_position = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
    return per_position * conv.out_channels * out_size * out_size


def resnet_macs(model, input_size: int) -> int:
    """count_macs of a resnetlab ResNet (square input) from its layer shapes, without a forward pass.

    Follows ResNet.forward: stem conv, max-pool (ImageNet stem), then per block the main-path
    convolutions in order (conv1, conv2[, conv3]) and the projection shortcut on the block's input.
    """
    size = _conv_out(input_size, model.conv1)
    total = _conv_macs(model.conv1, size)
    if isinstance(model.maxpool, nn.MaxPool2d):
        pool = model.maxpool
        size = (size + 2 * pool.padding - pool.dilation * (pool.kernel_size - 1) - 1) // pool.stride + 1
    for stage in model.stages():
        for block in stage:
            block_in = size
            for conv in (getattr(block, n) for n in ("conv1", "conv2", "conv3") if hasattr(block, n)):
                size = _conv_out(size, conv)
                total += _conv_macs(conv, size)
            shortcut = block.downsample.modules() if block.downsample is not None else ()
            total += sum(_conv_macs(c, _conv_out(block_in, c)) for c in shortcut if isinstance(c, nn.Conv2d))
    return total + model.fc.in_features * model.fc.out_features


def profile(name: str, input_size: int | None = None, **kwargs) -> Profile:
    """Counts for a registered model at its native input size (224, or 32 for CIFAR nets and the CIFAR
    stem) unless given one."""
    from .registry import create_model, model_info

    expect_type(name, str, "profile takes a model name such as 'resnet50' (list_models() names them)")
    native = 32 if kwargs.get("stem") == "cifar" else model_info(name).input_size  # stem="cifar": for 32 px images
    size = native if input_size is None else expect_count("input_size", input_size)
    with torch.device("meta"):
        model = create_model(name, **kwargs).eval()
    return Profile(count_params(model), resnet_macs(model, size), size)
