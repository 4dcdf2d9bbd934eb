"""Wide stride-2 convolutions of CPU bf16 training whose gradients are matrix products.

In bf16 channels_last training on the 2-core AMX Xeon (2026-12-02), oneDNN's weight gradients
of ResNet-50's stride-2 convolutions with 512 and more input channels took 2.3-4.1x the time of
the same layers' forward passes: their reduction (N*Ho*Wo pixels, 1568 at batch 32 in the last
stage) is short and their output (K x C x k x k) large.

Written as what it is, the weight gradient is one matrix product: the input pixels the kernel
reads (every second pixel; for a 3x3 kernel its nine shifted views side by side, i.e. an im2col of
the output's pixels) form an (N*Ho*Wo, k*k*C) matrix M, and dW = dY^T @ M, dY viewed as
(N*Ho*Wo, K) without a copy. A 1x1 projection's input gradient is dY @ W, put at every second pixel
of a zero gradient. Per layer, forward + backward in bf16, that ran 1.44-2.38x faster than
oneDNN for 512 and more input channels and 0.42-1.08x for fewer (`python
benchmarks/strided_layers.py`, benchmarks/results/amx_xeon/strided_layers.json), hence the rule
below; in fp32 it won 1.09-1.38x at the wide layers only, about 1% of an fp32 step, so fp32 keeps
the convolution. The forward pass and a 3x3 kernel's input gradient stay oneDNN's.

Like models/pointwise.py it is the same math on the same weights, used only where it applies:
a training nn.Conv2d of stride 2 with a 1x1 (no padding) or 3x3 (padding 1) kernel, no bias, one
group, at least WIDE input channels, on a bf16 channels_last CPU tensor with bf16 weights or under
autocast, without hooks (models/routes.py). Everything else, an FX trace included, calls the
module itself. No double backward (`create_graph`): its backward is once-differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .routes import hooked, runs_in_bf16

WIDE = 512  # input channels from which the matrix products won, per layer (see the docstring)
CL = torch.channels_last


def applies(conv: nn.Conv2d, x) -> bool:
    """Whether conv(x) takes the matrix-product gradients (see the module's docstring); a module that
    is not a plain nn.Conv2d (a quantized or wrapped one) is run as itself."""
    if type(conv) is not nn.Conv2d:
        return False
    k = conv.kernel_size
    return (conv.training and isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.bfloat16 and x.dim() == 4 and conv.stride == (2, 2)
            and ((k == (1, 1) and conv.padding == (0, 0)) or (k == (3, 3) and conv.padding == (1, 1)))
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and conv.in_channels >= WIDE and x.is_contiguous(memory_format=CL) and runs_in_bf16(conv)
            and not hooked(conv))


def strided_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), with the gradients of `weight_grad`/`input_grad_1x1` where it `applies`."""
    if applies(conv, x):
        return _StridedConv.apply(x, conv.weight.to(torch.bfloat16), conv.kernel_size[0])
    return conv(x)


def pixels_read(x: torch.Tensor, kernel: int, out_h: int, out_w: int) -> torch.Tensor:
    """(N*out_h*out_w, kernel*kernel*C): for each output pixel of a stride-2 convolution (padding
    kernel // 2) the input values its kernel reads, in the order (row, column, channel) of the
    kernel. x is channels_last; its (N, H, W, C) view is sliced without a copy."""
    nhwc = x.permute(0, 2, 3, 1)
    if kernel == 1:
        return nhwc[:, ::2, ::2, :].reshape(-1, x.shape[1])
    pad = kernel // 2
    padded = F.pad(nhwc, (0, 0, pad, pad, pad, pad))
    views = [padded[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2, :] for i in range(kernel) for j in range(kernel)]
    return torch.cat(views, dim=3).reshape(-1, kernel * kernel * x.shape[1])


def weight_grad(x: torch.Tensor, dy: torch.Tensor, kernel: int) -> torch.Tensor:
    """dW (K, C, kernel, kernel) of a stride-2 convolution, both tensors channels_last."""
    k_out, (n, c, out_h, out_w) = dy.shape[1], (x.shape[0], x.shape[1], dy.shape[2], dy.shape[3])
    grad = dy.permute(0, 2, 3, 1).reshape(n * out_h * out_w, k_out)
    dw = grad.t() @ pixels_read(x, kernel, out_h, out_w)  # (K, kernel*kernel*C), (row, column, channel)
    return dw.reshape(k_out, kernel, kernel, c).permute(0, 3, 1, 2)  # a channels_last (K, C, k, k)


def input_grad_1x1(dy: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """dX of a 1x1, stride-2 convolution: dY @ W at every second pixel, zero elsewhere."""
    n, c, h, w = x_shape
    grad = dy.permute(0, 2, 3, 1) @ weight.reshape(weight.shape[0], c)  # (N, Ho, Wo, C)
    dx = grad.new_zeros(n, h, w, c)
    dx[:, ::2, ::2, :] = grad
    return dx.permute(0, 3, 1, 2)


class _StridedConv(torch.autograd.Function):
    """A stride-2 convolution (padding kernel // 2) without bias of channels_last tensors of one dtype."""

    @staticmethod
    def forward(ctx, x, weight, kernel: int):
        ctx.save_for_backward(x, weight)
        ctx.kernel = kernel
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, None, 2, kernel // 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        kernel, pad = ctx.kernel, ctx.kernel // 2
        dy = dy.to(x.dtype).contiguous(memory_format=CL)
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            if kernel == 1:
                dx = input_grad_1x1(dy, weight, x.shape)
            else:
                dx = torch.ops.aten.convolution_backward(dy, x, weight, None, [2, 2], [pad, pad], [1, 1], False,
                                                         [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            dweight = weight_grad(x, dy, kernel).to(weight.dtype)
        return dx, dweight, None
