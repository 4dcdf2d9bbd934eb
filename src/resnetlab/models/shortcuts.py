"""The shortcuts of the residual blocks (He et al. 2016, Sec. 3.3): option A's parameter-free
identity with zero-padded channels, B's and C's 1x1 projections."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


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
