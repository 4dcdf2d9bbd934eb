"""A bottleneck's 1x1, stride-1 convolutions in bf16 CPU training, computed as what they are: one
matrix product over the pixels, (N*H*W, C) @ (C, K), whose backward is two more.

On the 2-core AMX Xeon (2026-12-02) each such layer ran 1.0-1.55x faster than oneDNN's
convolution, forward + backward (benchmarks/pointwise_layers.py), and the bench's bf16 ResNet-50
training step went from 3.02x to 3.31x the baseline; in fp32 it was a wash (0.75-1.27x per layer),
so fp32 keeps oneDNN's convolution. The same weights and math; an FX trace (x a Proxy), eval mode,
NCHW, CUDA and hooks (models/routes.py) see the module itself.

A block whose first convolution is such a layer and whose shortcut is the identity (every
bottleneck of ResNet-50/101/152 after a stage's first) takes both in one autograd node
(`pointwise_and_shortcut`): backward adds the shortcut's gradient to the convolution's input
gradient inside the matrix product (C += dY @ W), instead of autograd adding the two over the whole
tensor afterwards, one pass over memory less for the largest tensors of a step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .routes import hooked


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(x) is a training 1x1 stride-1 convolution of a bf16 channels_last CPU tensor (an
    nn.Conv2d itself: a subclass may compute something else in its forward)."""
    return (type(conv) is nn.Conv2d and conv.training and isinstance(x, torch.Tensor) and x.device.type == "cpu"
            and x.dtype == torch.bfloat16 and x.dim() == 4 and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and x.is_contiguous(memory_format=torch.channels_last) and not hooked(conv))


def conv1x1_as_matmul(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) as the matrix product over the pixels (autograd's own backward)."""
    return over_pixels(x, conv.weight)


def over_pixels(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear over the pixels of a channels_last x viewed as (N, H, W, C) without a copy, the
    result (N, H, W, K) viewed back as channels_last (N, K, H, W)."""
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1)).permute(0, 3, 1, 2)


def pointwise_and_shortcut(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(x), x) as one autograd node, for a block whose shortcut is the identity; the caller has
    checked `applies(conv, x)` and that the shortcut's only consumer is a fused batch-norm with the
    residual (models/fused_bn.py), whose backward makes its gradient a tensor of its own: this node
    adds into it in place. The weight is rounded to bf16 as autocast rounds it."""
    return _PointwiseAndShortcut.apply(x, conv.weight.to(torch.bfloat16))


def pixels(t: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) tensor as the (N*H*W, C) matrix it is in memory (a view)."""
    return t.permute(0, 2, 3, 1).view(-1, t.shape[1])  # view, never a copy: backward writes through it


class _PointwiseAndShortcut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not a tensor of zeros
        ctx.save_for_backward(x, weight)
        with torch.autocast("cpu", enabled=False):
            y = over_pixels(x, weight)
        return y, x  # autograd hands back a view of x whose gradient comes here

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dshortcut):
        x, weight = ctx.saved_tensors
        if dy is None:
            return dshortcut, None
        dy = pixels(dy.to(x.dtype).contiguous(memory_format=torch.channels_last))
        w = weight.flatten(1)  # (K, C)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            if dshortcut is None:
                dx = (dy @ w).view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
            else:  # the shortcut's gradient, made for this node alone (see pointwise_and_shortcut),
                # takes the product in place: C += dY @ W, rounded once
                dx = dshortcut.to(x.dtype).contiguous(memory_format=torch.channels_last)
                pixels(dx).addmm_(dy, w)
        if ctx.needs_input_grad[1]:
            dweight = (dy.t() @ pixels(x)).view_as(weight)
        return dx, dweight
