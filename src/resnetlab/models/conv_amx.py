"""3x3 stride-1 convolutions of bf16 CPU training whose weight gradient runs on AMX tiles.

In a bf16 channels_last ResNet step on the 2-core AMX Xeon, oneDNN's weight gradients were the
largest single cost: 1.2-3.6x the time of the same layer's forward pass, at 80-230 GMAC/s
(issue 18). conv_amx.cpp computes them by reducing over 32 images at a time, pixel by pixel, from
two small buffers per band of rows, so no im2col is built; per ResNet layer it ran 1.03-2.79x faster
than oneDNN (benchmarks/conv_amx_layers.py). The forward pass and the input gradient stay oneDNN's.

It is a module choice like the fused batch-norm, and the same switch (train.fused_bn, the blocks'
`fused_bn`) turns resnetlab's own kernels on or off. It applies only where the kernel does: a
training nn.Conv2d 3x3, stride 1, padding 1, no bias, channels multiples of 16, on a bf16
channels_last CPU tensor (bf16 weights, or CPU autocast to bf16), without hooks, on a CPU with
AMX. Everything else, an FX trace included, calls the module itself. The kernel sums in fp32 and
returns the gradient rounded once to bf16; oneDNN rounds the same way (tests/test_conv_amx.py).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .native import NativeKernels
from .routes import hooked, runs_in_bf16

SOURCE = Path(__file__).with_name("conv_amx.cpp")
KERNELS = NativeKernels(SOURCE, "resnetlab_conv_amx", "AMX convolution weight-gradient kernel",
                        "training uses oneDNN's weight gradients")
UNIT = (1, 1)


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    from resnetlab.cpu import cpu_flags, has_amx

    return has_amx(cpu_flags())


def available() -> bool:
    """Whether the kernel runs here: a CPU with AMX, and the kernel built (on first call)."""
    return cpu_has_amx() and KERNELS.get() is not None


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(x) can take the AMX weight-gradient path (see the module's docstring)."""
    return (conv.training and isinstance(x, torch.Tensor) and torch.is_grad_enabled()
            and conv.weight.requires_grad and x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
            and conv.kernel_size == (3, 3) and conv.stride == UNIT and conv.padding == UNIT
            and conv.dilation == UNIT and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and conv.in_channels % 16 == 0 and conv.out_channels % 16 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and runs_in_bf16(conv) and not hooked(conv)
            and available())


def conv3x3_amx(conv: nn.Conv2d, x: torch.Tensor, own_kernels: bool) -> torch.Tensor:
    """conv(x), with the weight gradient on AMX tiles where `own_kernels` and it `applies`."""
    if own_kernels and applies(conv, x):
        return _Conv3x3.apply(x, conv.weight.to(torch.bfloat16))
    return conv(x)


class _Conv3x3(torch.autograd.Function):
    """A 3x3, stride-1, padding-1 convolution without bias of bf16 channels_last tensors."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, None, 1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(dy, x, weight, None, list(UNIT), list(UNIT), list(UNIT), False,
                                                     [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            dweight = KERNELS.get().conv3x3_weight_grad(x, dy).to(weight.dtype)
        return dx, dweight
