"""3x3 convolutions of fp32 CPU training in resnetlab's own direct kernels (conv_direct.cpp and, for
stride 2, conv_direct_stride2.h): forward pass, input gradient and weight gradient, on Intel CPUs
with AVX-512 whose training runs in fp32.

On a 2-core Ice Lake Xeon (AVX-512, no bf16: training's `auto` is fp32 there) oneDNN ran
ResNet-20's narrow 3x3 layers at 50-68 GMAC/s (16 channels) of an fp32 peak over 150 (issue 18).
conv_direct.cpp computes them directly: the forward pass from a zero-bordered copy of each image,
each input value broadcast once for the three horizontal taps that read it; the input gradient as
the same convolution of the output gradient with the weights' channel axes swapped and both
spatial axes flipped; the weight gradient pixel by pixel, each input value broadcast once for the
three output pixels whose gradients it meets. Per layer (benchmarks/direct_conv_layers.py,
benchmarks/results/xeon_icelake/direct_conv_layers.json) they ran 1.8x oneDNN's speed at 16
channels (forward and input gradient; weight gradient 1.06x) and 1.2-1.4x at 32. The CIFAR
ResNets' stage entries (stride 2, 16 -> 32 and 32 -> 64 channels) have their own forms: there
oneDNN's input and weight gradients ran at 50-83 GMAC/s, the kernels' 1.7-2.0x and 1.4-2.0x
faster, the forward pass 1.2-1.3x (direct-stride2-2026-12-04/direct_conv_layers.json). Measured
on that Ice Lake only; other Intel CPUs with AVX-512 (Skylake-SP, Cascade Lake) take it by the
same rule. At stride 1 the forward pass and the weight gradient can also take a fused batch-norm's
input with its scale and shift and apply them (and ReLU) as they copy it in: models/bn_relu_conv.py.
The CIFAR ResNets' first layer (3 -> 16 channels, FIRST_LAYERS) takes the forward pass alone, where
oneDNN ran at 33 GMAC/s and the kernel 2.15x faster (first-layer-2026-12-04/direct_conv_layers.json);
its gradients stay oneDNN's.

It is a module choice like the fused batch-norm, and the same switch (train.fused_bn, the blocks'
`fused_bn`) turns resnetlab's own kernels on or off. It applies only where the kernels do: a
training nn.Conv2d itself (not a subclass, whose forward may differ: QAT, weight standardisation)
3x3, padding 1, no bias, at stride 1 as many channels out as in, of a width in WIDTHS (or a first
layer's in and out channels, FIRST_LAYERS), at stride 2 channels in and out as in STRIDED and even
sides, fp32 weights on an fp32 channels_last CPU tensor outside autocast, without hooks, on a CPU
where `kernel_kind` names it. Everything else, an FX trace included, calls the module itself. Its
backward is once-differentiable: a second-order gradient needs the route off (train.fused_bn false).
The kernels sum in fp32 as oneDNN does, in another order: results agree to about 1e-6 relative
(tests/test_conv_direct.py). Each forward and input-gradient thread writes whole images, and the
weight gradient adds the threads' sums in a fixed order, so a run is repeatable bit for bit at a
given thread count, as resume requires.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .native import NativeKernels
from .routes import hooked
from .shortcuts import subsample_pad

SOURCE = Path(__file__).with_name("conv_direct.cpp")
KERNELS = NativeKernels(SOURCE, "resnetlab_conv_direct", "direct 3x3 convolution kernel",
                        "training uses oneDNN's convolutions")
UNIT, TWO = (1, 1), (2, 2)
# Channels in = out that take the kernel at stride 1: where it ran clearly faster than oneDNN per
# layer. At 64 channels its 147 KB of weights no longer fit the L1 cache: forward 0.86x at 56 px,
# 1.09x at 8 px (direct_conv_layers.json).
WIDTHS = (16, 32)
# (in, out) channels of a network's first layer whose forward pass the kernel takes at stride 1 (the
# CIFAR ResNets' 3 -> 16); its gradients stay oneDNN's (the kernel's weight gradient at 3 input
# channels ran at half oneDNN's speed; the input gradient of the images is rarely wanted).
FIRST_LAYERS = ((3, 16),)
# (in, out) channels of the stride-2 layers it has (conv_direct_stride2.h): ResNet-20/32/44/56/110's
# stage entries; images of even height and width.
STRIDED = ((16, 32), (32, 64))


@lru_cache(maxsize=1)
def kernel_kind() -> str | None:
    """"AVX-512" on CPUs with AVX-512 whose training runs in fp32 (`auto`: no AMX, and not AMD's
    AVX-512 BF16, where bf16 is faster still and this kernel has no bf16 form); else None."""
    from resnetlab.cpu import cpu_flags, cpu_vendor, has_fast_bf16

    flags = cpu_flags()
    return "AVX-512" if "avx512f" in flags and not has_fast_bf16(flags, cpu_vendor()) else None


def available() -> bool:
    """Whether the kernel runs here: meant for this CPU (`kernel_kind`) and built (on first call)
    with its AVX-512 code (a compiler without AVX-512 builds an empty module)."""
    kernels = KERNELS.get() if kernel_kind() is not None else None
    return kernels is not None and kernels.built


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(x) can take the kernel's path (see the module's docstring)."""
    return (type(conv) is nn.Conv2d and conv.training and isinstance(x, torch.Tensor) and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and conv.weight.dtype == torch.float32
            and conv.weight.device == x.device and conv.kernel_size == (3, 3)
            and conv.padding == UNIT and conv.dilation == UNIT and conv.groups == 1
            and conv.bias is None and conv.padding_mode == "zeros" and has_kernel(conv, x)
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.is_autocast_enabled("cpu")
            and not hooked(conv) and available())


def has_kernel(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the kernels have conv's stride and channels (and, at stride 2, x's even sides)."""
    if conv.stride == UNIT:
        return (conv.in_channels == conv.out_channels and conv.out_channels in WIDTHS
                or (conv.in_channels, conv.out_channels) in FIRST_LAYERS)
    return (conv.stride == TWO and (conv.in_channels, conv.out_channels) in STRIDED
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0)


def conv3x3_direct(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) by resnetlab's direct kernel where it `applies`, else by the module itself."""
    if applies(conv, x):
        return _Conv3x3.apply(x, conv.weight, conv.stride[0])
    return conv(x)


def conv3x3_direct_and_shortcut(conv: nn.Conv2d, x: torch.Tensor, cout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(x), shortcut(x)) for a basic block whose first convolution takes the kernels and whose
    shortcut is parameter-free: x itself (stride 1) or option A's (x subsampled by 2, zero-padded to
    `cout` channels). One autograd node for both, so that backward adds the shortcut's gradient to
    the convolution's input gradient as the kernel writes it: without it autograd sums the two
    over the whole tensor afterwards, and option A's gradient is first a zero-filled tensor of x's
    size (an fp32 ResNet-20 step on the Ice Lake Xeon ran 1.023x faster with it, the same bits:
    benchmarks/results/xeon_icelake/shortcut-2026-12-04/). The caller has checked `applies(conv, x)`."""
    return _Conv3x3AndShortcut.apply(x, conv.weight, conv.stride[0], cout)


def packed(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (9, C_in, C_out), the kernel's layout: per tap, per input channel,
    the row of output channels it feeds (one or more zmm vectors)."""
    return weight.permute(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0]).contiguous()


def packed_for_input_grad(weight: torch.Tensor) -> torch.Tensor:
    """The weights whose convolution of dy is dx: channel axes swapped, both spatial axes flipped."""
    return packed(weight.transpose(0, 1).flip(2, 3))


def packed_for_strided_input_grad(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (9, C_out, C_in): per tap, per output channel, the row of input
    channels its gradient reaches (the stride-2 input gradient picks its taps per output parity)."""
    return weight.permute(2, 3, 0, 1).reshape(9, weight.shape[0], weight.shape[1]).contiguous()


def onednn_grad(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, which: int) -> torch.Tensor:
    """oneDNN's input (which=0) or weight (which=1) gradient, as nn.Conv2d's backward computes it."""
    return torch.ops.aten.convolution_backward(dy, x, weight, None, [stride] * 2, list(UNIT), list(UNIT), False,
                                               [0, 0], 1, [which == 0, which == 1, False])[which]


def input_grad(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
               add: torch.Tensor | None = None) -> torch.Tensor:
    """dx of a layer the kernels take (+ add, a shortcut's gradient, added as the kernel writes);
    oneDNN's for a first layer (FIRST_LAYERS: the kernels have no 16 -> 3)."""
    if (weight.shape[1], weight.shape[0]) in FIRST_LAYERS:
        dx = onednn_grad(dy, x, weight, stride, 0)
        return dx if add is None else dx + add
    if stride == 1:
        return KERNELS.get().conv3x3(dy, packed_for_input_grad(weight), 1, add)
    return KERNELS.get().conv3x3_input_grad_s2(dy, packed_for_strided_input_grad(weight), add)


def weight_grad(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """dW of a layer the kernels take: theirs, or oneDNN's for a first layer (FIRST_LAYERS)."""
    if (weight.shape[1], weight.shape[0]) in FIRST_LAYERS:
        return onednn_grad(dy, x, weight, stride, 1)
    return KERNELS.get().conv3x3_weight_grad(x, dy, stride)


class _Conv3x3(torch.autograd.Function):
    """A 3x3, padding-1 convolution (stride 1 or 2) without bias of fp32 channels_last tensors."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return KERNELS.get().conv3x3(x, packed(weight), stride)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx = input_grad(dy, x, weight, ctx.stride)
        if ctx.needs_input_grad[1]:
            dweight = weight_grad(x, dy, weight, ctx.stride)
        return dx, dweight, None


class _Conv3x3AndShortcut(torch.autograd.Function):
    """_Conv3x3 with a second output, the block's parameter-free shortcut of the same x."""

    @staticmethod
    def forward(ctx, x, weight, stride: int, cout: int):
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not a tensor of zeros
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.out_shape = stride, (x.shape[0], weight.shape[0], x.shape[2] // stride, x.shape[3] // stride)
        y = KERNELS.get().conv3x3(x, packed(weight), stride)
        if stride == 1:
            return y, x  # autograd hands back a view of x whose gradient comes here
        return y, subsample_pad(x, 2, x.shape[1], cout)  # channels_last, as x

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dshortcut):
        x, weight = ctx.saved_tensors
        dy = (torch.zeros(ctx.out_shape, dtype=x.dtype) if dy is None else dy).contiguous(memory_format=torch.channels_last)
        add = None if dshortcut is None else dshortcut.float().contiguous(memory_format=torch.channels_last)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx = input_grad(dy, x, weight, ctx.stride, add)
        if ctx.needs_input_grad[1]:
            dweight = weight_grad(x, dy, weight, ctx.stride)
        return dx, dweight, None, None
