"""3x3 stride-1 convolutions of bf16 CPU training whose weight gradient runs in resnetlab's own
kernel (conv_wgrad.cpp): on AMX tiles, or with AVX-512 BF16 on CPUs without AMX (Zen 4).

In a bf16 channels_last ResNet step on the 2-core AMX Xeon, oneDNN's weight gradients were the
largest single cost: 1.2-3.6x the time of the same layer's forward pass, at 80-230 GMAC/s
(issue 18). conv_wgrad.cpp computes them by reducing over 32 images at a time, pixel by pixel,
from two small buffers per band of rows, so no im2col is built; per ResNet layer its AMX form ran
1.03-2.79x faster than oneDNN, and its AVX-512 BF16 form on a 2-core Zen 4 1.09-1.66x faster at
16-64 channels but 0.89-0.95x at 128-512 (benchmarks/conv_wgrad_layers.py), so there it takes
convolutions of at most 64 channels (WIDEST_AVX512). The forward pass and the input gradient stay
oneDNN's.

It is a module choice like the fused batch-norm, and the same switch (train.fused_bn, the blocks'
`fused_bn`) turns resnetlab's own kernels on or off. It applies only where the kernel does: a
training nn.Conv2d 3x3, stride 1, padding 1, no bias, channels multiples of 16, on a bf16
channels_last CPU tensor (bf16 weights, or CPU autocast to bf16), without hooks, on a CPU with
AMX or an AMD CPU with AVX-512 BF16 (`kernel_kind`). Everything else, an FX trace included,
calls the module itself. The kernel sums in fp32; an fp32 parameter (autocast's) gets that sum as
it is, where oneDNN's gradient is rounded to bf16 first, and a bf16 one gets it rounded once
(tests/test_conv_wgrad.py, tests/test_conv_wgrad_shortcut.py).
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

SOURCE = Path(__file__).with_name("conv_wgrad.cpp")
KERNELS = NativeKernels(SOURCE, "resnetlab_conv_wgrad", "convolution weight-gradient kernel",
                        "training uses oneDNN's weight gradients")
UNIT = (1, 1)
WIDEST_AVX512 = 64  # channels in and out; wider layers ran at 0.89-0.95x oneDNN's speed on the Zen 4
WIDEST_ADDED_AS_WRITTEN = 128  # channels: wider, the flipped weights cost more than the addition saves


@lru_cache(maxsize=1)
def kernel_kind() -> str | None:
    """The half of the kernel this CPU is meant to build: "AMX"; "AVX-512 BF16" where bf16 is fast
    without AMX (AMD's Zen 4 and later, where it was measured); else None. An Intel Xeon with
    AVX-512 BF16 but no AMX ran bf16 at half its fp32 rate, so its training stays fp32 and oneDNN's."""
    from resnetlab.cpu import cpu_flags, cpu_vendor, has_amx, has_fast_bf16

    flags = cpu_flags()
    return "AMX" if has_amx(flags) else "AVX-512 BF16" if has_fast_bf16(flags, cpu_vendor()) else None


def available() -> bool:
    """Whether the kernel runs here: the half meant for this CPU (`kernel_kind`) built (on first
    call), and ready (AMX: the OS gave the process its tile registers). A compiler that cannot
    build that half builds the other or none (-march=native decides): oneDNN's gradients then."""
    kind = kernel_kind()
    kernels = KERNELS.get() if kind is not None else None
    return kernels is not None and kernels.kind == kind and kernels.ready()


def fits(conv: nn.Conv2d) -> bool:
    """Whether the kernel's half for this CPU was measured faster than oneDNN at conv's width."""
    return kernel_kind() == "AMX" or max(conv.in_channels, conv.out_channels) <= WIDEST_AVX512


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(x) can take the kernel's weight-gradient path (see the module's docstring)."""
    return (type(conv) is nn.Conv2d and conv.training and isinstance(x, torch.Tensor) and torch.is_grad_enabled()
            and conv.weight.requires_grad and x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
            and conv.kernel_size == (3, 3) and conv.stride == UNIT and conv.padding == UNIT
            and conv.dilation == UNIT and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and conv.in_channels % 16 == 0 and conv.out_channels % 16 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and runs_in_bf16(conv) and not hooked(conv)
            and available() and fits(conv))


def conv3x3_own_wgrad(conv: nn.Conv2d, x: torch.Tensor, own_kernels: bool) -> torch.Tensor:
    """conv(x), with the weight gradient in resnetlab's kernel where `own_kernels` and it `applies`."""
    if own_kernels and applies(conv, x):
        return _Conv3x3.apply(x, conv.weight)
    return conv(x)


def conv3x3_own_wgrad_and_shortcut(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(x), x) as one autograd node, for a basic block whose shortcut is the identity; the caller
    has checked `applies(conv, x)` and that the shortcut's only consumer is a fused batch-norm with
    the residual, whose backward makes its gradient a tensor of its own (as for
    pointwise.pointwise_and_shortcut): this node's backward has oneDNN add the convolution's input
    gradient into it as it writes (`input_grad`), instead of autograd adding the two over the whole
    tensor afterwards, a pass over memory less per identity block."""
    return _Conv3x3AndShortcut.apply(x, conv.weight)


@lru_cache(maxsize=1)
def _fused_addition_built() -> bool:
    """Whether this PyTorch has oneDNN's convolution with an in-place addition (the operator
    torch.compile's CPU backend uses; a private one, so its absence is a fallback, not an error)
    and oneDNN runs bf16 on this CPU (it refuses without AVX-512 BW/VL/DQ or AVX-NE-CONVERT, or
    with its instruction set capped lower, ONEDNN_MAX_CPU_ISA)."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def _fused_addition() -> bool:
    """_fused_addition_built(), and oneDNN not switched off (torch.backends.mkldnn.enabled)."""
    return bool(torch.backends.mkldnn.enabled) and _fused_addition_built()


def input_grad(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
               add: torch.Tensor | None = None) -> torch.Tensor:
    """dx of the convolution, oneDNN's backward pass; with `add` (a gradient of x's shape that no
    one else holds) the sum dx + add, written into `add`. Up to 128 channels that is one call:
    oneDNN's forward convolution of dy with the weights flipped and their channel axes swapped (the
    same dx), whose "add" post-op reads `add` as it writes, summed in fp32 and rounded once; per
    layer 1.13-1.43x faster than the backward pass and the addition after it on the AMX Xeon
    (benchmarks/conv_wgrad_layers.py --input-grad, at ResNet-20's and ResNet-18/34's widths).
    Wider, making the flipped weights (a slow transposing copy in PyTorch) cost more than it
    saved (0.43x at 512). Elsewhere, or without the operator: the two, added in place."""
    if add is not None and max(weight.shape[:2]) <= WIDEST_ADDED_AS_WRITTEN and _fused_addition():
        flipped = weight.transpose(0, 1).flip(2, 3).contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise_(add, dy, flipped, None, list(UNIT), list(UNIT), list(UNIT), 1,
                                                       "add", 1.0, None, [], None)
    dx = torch.ops.aten.convolution_backward(dy, x, weight, None, list(UNIT), list(UNIT), list(UNIT), False, [0, 0], 1,
                                             [True, False, False])[0]
    return dx if add is None else add.add_(dx)


def _gradients(ctx, dy: torch.Tensor, dshortcut: torch.Tensor | None = None):
    """(dx (+ the shortcut's gradient), dweight) of a _Conv3x3 node, each where it is needed."""
    x, weight = ctx.saved_tensors
    dy = dy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    if dshortcut is not None:
        dshortcut = dshortcut.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    dx = input_grad(dy, x, weight, dshortcut) if ctx.needs_input_grad[0] else None
    dweight = KERNELS.get().conv3x3_weight_grad(x, dy).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
    return dx, dweight


def _forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv(x) of a _Conv3x3 node. The weight is rounded to bf16 here, as autocast rounds it, not
    before the node: the kernel's fp32 gradient then goes to an fp32 parameter as it is, rather than
    rounded to bf16 and cast back (two casts per convolution and step fewer, and no rounding)."""
    ctx.weight_dtype = weight.dtype
    weight = weight.to(torch.bfloat16)
    ctx.save_for_backward(x, weight)
    with torch.autocast("cpu", enabled=False):
        return F.conv2d(x, weight, None, 1, 1)


class _Conv3x3(torch.autograd.Function):
    """A 3x3, stride-1, padding-1 convolution without bias of bf16 channels_last tensors."""

    @staticmethod
    def forward(ctx, x, weight):
        return _forward(ctx, x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        return _gradients(ctx, dy)


class _Conv3x3AndShortcut(torch.autograd.Function):
    """_Conv3x3 with a second output, x itself: an identity shortcut whose gradient joins dx."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not a tensor of zeros
        return _forward(ctx, x, weight), x  # autograd hands back a view of x whose gradient comes here

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dshortcut):
        if dy is None:
            return dshortcut, None
        return _gradients(ctx, dy, dshortcut)
