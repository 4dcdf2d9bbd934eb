"""conv(relu(bn(x))) in fp32 CPU training as one autograd node, where the convolution is a 3x3,
stride-1 one of resnetlab's direct kernels (models/conv_direct.py): a basic block's second
convolution after its first batch-norm (a pre-activation block's after its second, and its first
after its first where the shortcut is the identity; a bottleneck's 3x3 after its first).

Fused batch-norm + ReLU and the convolution as two nodes write relu(bn(x)) to memory, read it back
in the convolution, and keep it until backward for the weight gradient. Here batch-norm only
measures x (fused_bn.cpp's `statistics`: one pass, nothing written), and the kernels apply
relu(x * scale + shift) as they copy each row into the cache-resident buffer they compute from:
the forward pass's padded image, and backward's weight-gradient image, made again from x. The
normalised tensor is never stored: one write and one read fewer per such layer each step, and one
activation fewer held for backward. Backward: the convolution's input gradient, then the
batch-norm's backward (ReLU's mask found in x, as fused_bn's without a residual).

The kernels apply the normalisation with the batch-norm kernel's own arithmetic (one fused
multiply-add, then the maximum with 0), so every output, gradient and running statistic has the
same bits as fused batch-norm + ReLU followed by the direct convolution (tests/test_bn_relu_conv.py).
It is part of the same switch (train.fused_bn) and applies where both halves would: `applies`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import conv_direct
from .conv_direct import packed
from .fused_bn import EXTENSION, _counted, _next_momentum, fusable

CL = torch.channels_last


def applies(bn: nn.Module, conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(relu(bn(x))) can be one node: bn runs fused (fused_bn.fusable) and conv, at
    stride 1 with bn's channels, takes the direct kernels for an input like x (conv_direct.applies:
    fp32 channels_last, no hooks, the kernels built)."""
    return (conv.stride == (1, 1) and fusable(bn, x) and bn.num_features == conv.in_channels
            and conv_direct.applies(conv, x))


def bn_relu_conv3x3(bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(relu(bn(x))) as one node; bn's running statistics and batch count move as the module's
    would. The caller has checked `applies(bn, conv, x)`."""
    return _counted(_BatchNormReLUConv3x3.apply(x, bn.weight, bn.bias, conv.weight, bn, _next_momentum(bn)), bn)


class _BatchNormReLUConv3x3(torch.autograd.Function):
    """conv3x3(relu(batch_norm(x))), batch-norm in training mode, the convolution at stride 1."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, conv_weight, bn: nn.BatchNorm2d, momentum: float):
        mean, invstd, scale, shift = EXTENSION.get().statistics(x, bn_weight, bn_bias, bn.running_mean,
                                                                bn.running_var, momentum, bn.eps)
        ctx.save_for_backward(x, bn_weight, conv_weight, mean, invstd, scale, shift)
        return conv_direct.KERNELS.get().conv3x3(x, packed(conv_weight), 1, None, scale, shift)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, bn_weight, conv_weight, mean, invstd, scale, shift = ctx.saved_tensors
        kernels = conv_direct.KERNELS.get()
        dy = dy.contiguous(memory_format=CL)
        dx = dbn_weight = dbn_bias = dconv_weight = None
        if any(ctx.needs_input_grad[:3]):
            dnormalised = conv_direct.input_grad(dy, x, conv_weight, 1)  # x: its shape (the normalised one's)
            dx, dbn_weight, dbn_bias, _ = EXTENSION.get().backward(dnormalised, None, x, bn_weight, mean, invstd,
                                                                   scale, shift, False)
        if ctx.needs_input_grad[3]:
            dconv_weight = kernels.conv3x3_weight_grad(x, dy, 1, scale, shift)
        return dx, dbn_weight, dbn_bias, dconv_weight, None, None
