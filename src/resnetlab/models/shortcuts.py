"""The shortcuts of the residual blocks (He et al. 2016, Sec. 3.3): option A's parameter-free
identity with zero-padded channels, B's and C's 1x1 projections."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import fused_bn
from .routes import hooked, runs_in_bf16


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def subsample_pad(x: torch.Tensor, stride: int, cin: int, cout: int) -> torch.Tensor:
    """Every stride-th pixel of x (cin channels), its channels zero-padded at the end up to cout.
    The channel counts are plain ints, so an FX trace (x a Proxy) records the same ops."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    if cout > cin:  # pad channels at the end: (W-left, W-right, H-top, H-bottom, C-front, C-back)
        x = F.pad(x, (0, 0, 0, 0, 0, cout - cin))
    return x


class _SubsamplePad(torch.autograd.Function):
    """subsample_pad whose gradient has x's memory format. Autograd's own backward of the strided
    slice makes an NCHW gradient; adding that to the channels_last gradient of the block's first
    convolution (autograd sums the two paths into x) ran 12x slower than a same-layout addition,
    and with a copy back to channels_last it cost 8% of a bf16 ResNet-20 step (issue 18)."""

    @staticmethod
    def forward(ctx, x, stride: int, cout: int):
        ctx.layout = (x.shape, x.stride(), x.dtype, x.device)
        ctx.stride = stride
        return subsample_pad(x, stride, x.shape[1], cout)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        shape, strides, dtype, device = ctx.layout
        dx = torch.empty_strided(shape, strides, dtype=dtype, device=device).zero_()
        dx[:, :, ::ctx.stride, ::ctx.stride] = dy[:, :shape[1]]
        return dx, None, None


class ZeroPadShortcut(nn.Module):
    """Option A (Sec. 3.3): identity with stride-2 subsampling and zero-padded extra channels.

    It has no parameters, which is why the paper's CIFAR nets have exactly 0.27M ... 19.4M.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
                and not torch.jit.is_tracing()):
            return _SubsamplePad.apply(x, self.stride, self.cout)
        # the same ops, as inference, an FX trace (x a Proxy) or a TorchScript trace sees them
        return subsample_pad(x, self.stride, self.cin, self.cout)

    def extra_repr(self) -> str:
        return f"{self.cin}->{self.cout}, stride={self.stride}"


def entry_applies(conv: nn.Module, x) -> bool:
    """Whether a stage entry's first convolution and its option-A shortcut can be one node
    (`conv_and_zero_pad`): a training nn.Conv2d 3x3, stride 2, padding 1, no bias, unhooked, of a
    CPU tensor in fp32 (no autocast) or bf16 (bf16 weights or autocast), with gradients on."""
    return (type(conv) is nn.Conv2d and conv.training and isinstance(x, torch.Tensor) and torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dim() == 4 and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros" and not hooked(conv)
            and ((x.dtype == torch.bfloat16 and runs_in_bf16(conv))
                 or (x.dtype == conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))))


def conv_and_zero_pad(conv: nn.Conv2d, x: torch.Tensor, cout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(x), subsample_pad(x, 2, cin, cout)) as one autograd node, for a block entering a stage
    with option A (the CIFAR ResNets'); the caller has checked `entry_applies`. Backward adds the
    shortcut's gradient into the convolution's input gradient in place, at every second pixel,
    instead of autograd making a zero-filled gradient of x's size for the shortcut and adding the
    two over the whole tensor. The convolution and its gradients are oneDNN's, as the module's."""
    return _ConvAndZeroPad.apply(x, conv.weight.to(x.dtype), cout)


class _ConvAndZeroPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cout: int):
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not a tensor of zeros
        ctx.save_for_backward(x, weight)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, None, 2, 1), subsample_pad(x, 2, x.shape[1], cout)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dshortcut):
        x, weight = ctx.saved_tensors
        layout = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        if dy is None:  # the convolution's output unused: no weight gradient, as autograd gives none
            dx = torch.zeros_like(x, memory_format=layout) if ctx.needs_input_grad[0] else None
            if dx is not None and dshortcut is not None:
                add_at_even_pixels(dx, dshortcut)
            return dx, None, None
        dy = dy.to(x.dtype).contiguous(memory_format=layout)
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        dx, dweight, _ = torch.ops.aten.convolution_backward(dy, x, weight, None, [2, 2], [1, 1], [1, 1], False, [0, 0],
                                                             1, wanted)
        if dx is not None and dshortcut is not None:
            add_at_even_pixels(dx, dshortcut)  # in place: dx is oneDNN's fresh tensor
        return dx, dweight, None


def add_at_even_pixels(dx: torch.Tensor, g: torch.Tensor) -> None:
    """dx[:, :, ::2, ::2] += g[:, :C] in place (C: dx's channels): the fused batch-norm kernels' loop
    where they are built and both are channels_last of one dtype (PyTorch's own addition ran scalar
    on 16 bf16 channels per pixel, 4x slower), else PyTorch's; the same bits either way."""
    kernels = fused_bn.EXTENSION.get()
    if (kernels is not None and dx.dtype == g.dtype and dx.device.type == "cpu" and dx.dim() == 4
            and dx.is_contiguous(memory_format=torch.channels_last)):
        kernels.add_at_even_pixels(dx, g.contiguous(memory_format=torch.channels_last))
    else:
        dx[:, :, ::2, ::2] += g[:, :dx.shape[1]]


def make_shortcut(option: str, cin: int, cout: int, stride: int, preact: bool = False) -> nn.Module | None:
    """The shortcut of one block, or None for the plain identity.

    A: parameter-free identity (zero padding where the shape changes).
    B: 1x1 projection (+BN) only where the shape changes, identity elsewhere.
    C: projection on every shortcut.
    Pre-activation blocks project the already normalised input, so their projection has no BN.
    """
    changes = stride != 1 or cin != cout
    if option == "A":
        return ZeroPadShortcut(cin, cout, stride) if changes else None
    if option == "C" or (option == "B" and changes):
        if preact:
            return nn.Sequential(conv1x1(cin, cout, stride))
        return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    if option == "B":
        return None
    raise ValueError(f"shortcut option must be 'A', 'B' or 'C', got {option!r}")
