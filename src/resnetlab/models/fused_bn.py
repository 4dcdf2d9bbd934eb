"""Batch-norm + ReLU (+ the residual addition) of a training step, fused forward and backward.

On the CPU the memory-bound half of a ResNet step costs more than its convolutions: in a bf16
channels_last ResNet-20 step, batch-norm forward + backward took 26%, ReLU 17% and the additions
11% (issue 18). PyTorch runs each as its own pass over memory, and its per-channel kernels
vectorise poorly on the 16-64 channels of a channels_last tensor. Here the same math takes two
passes each way (fused_bn.cpp, built on first use with torch.utils.cpp_extension):

    forward:  per-channel sums of x - pivot              -> mean, variance
              y = relu(x * scale + shift (+ residual))   (scale, shift per channel)
    backward: per-channel sums of g and g * (x - mean), g = dy where ReLU let it through
              (with a residual, g is its gradient: written here, and read by the next pass
              in place of dy and y)
              dx = g * k1 + x * k2 + k3  (the batch-norm backward, collected per channel)

With AVX-512, on channels_last tensors whose channels are a multiple of 16, the passes are written
for rows of channels (fused_bn_rows.h): the reductions keep their sums in registers (the backward's
up to 128 channels), the elementwise passes give the same bits as the general ones. A bf16
ResNet-20 step ran 1.042x faster with them (27 of 30 rounds), ResNet-50 1.022x, an fp32 ResNet-20
1.007x (`benchmarks/route_ab.py --route row-passes`).

Backward keeps only x (as batch-norm does) and, with a residual, y (which the next convolution
saves anyway) for ReLU's mask; without one it finds the mask in x through the forward's own scale
and shift, and so reads two tensors, not three, in each of its passes. Outputs, gradients and
running statistics equal nn.BatchNorm2d + ReLU within rounding (tests/test_fused_bn.py);
parameters and buffers stay those of the block's own nn.BatchNorm2d, so state_dicts and
checkpoints are unchanged.

Alternatives measured first (benchmarks/README.md): PyTorch ops over a wide view of the tensor
(each op is one more pass: slower than the plain modules' backward); torch.compile of the same
math as four kernels (within 2-3x of a copy, but the guards and glue of four compiled calls cost
~0.9 ms per layer against 0.12 ms for the plain modules: 1.06x on a ResNet-20 step, against 1.5x
here); torch.compile of batch_norm + relu as PyTorch writes them (Welford per element: 8x slower).

It is a module choice, not a second training loop: `set_fused_bn(model)` switches every block of
a ResNet to it, and the blocks fall back to the plain modules wherever it does not apply (a BN
folded away or frozen in training, SyncBatchNorm, fp16, a layout other than NCHW/channels_last).
In eval mode without gradients (a training run's validation and test) a third kernel applies the
running statistics, ReLU and residual in one pass: PyTorch's three passes took about half the time
of a bf16 ResNet-20 evaluation.
If the extension cannot be built here (no C++ compiler), one warning says so and the plain
modules are used.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .native import NativeKernels
from .routes import hooked

SOURCE = Path(__file__).with_name("fused_bn.cpp")
DTYPES = (torch.float32, torch.bfloat16, torch.float64)


EXTENSION = NativeKernels(SOURCE, "resnetlab_fused_bn", "fused batch-norm kernels",
                           "PyTorch's plain batch-norm and ReLU are used, which are slower on the CPU")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`t` in x's dtype and layout (a copy only where they differ: the gradient that average
    pooling hands the last block is NCHW, for one)."""
    return t.to(x.dtype).contiguous(memory_format=_memory_format(x))


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x) (+ residual)) in training mode; updates the running statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, bn: nn.BatchNorm2d, momentum: float):
        kernels = EXTENSION.get()
        if residual is not None:
            residual = _like(residual, x)
        y, mean, invstd, scale, shift = kernels.forward(x, residual, weight, bias, bn.running_mean, bn.running_var,
                                                        momentum, bn.eps)
        # ReLU's mask: without a residual, backward finds it in x (x * scale + shift > 0, the
        # forward's own numbers) rather than in y, one tensor fewer to read twice
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, y if ctx.has_residual else None, weight, mean, invstd, scale, shift)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, weight, mean, invstd, scale, shift = ctx.saved_tensors
        dx, dweight, dbias, dresidual = EXTENSION.get().backward(_like(dy, x), y, x, weight, mean, invstd, scale, shift,
                                                                 ctx.has_residual)
        return dx, dweight, dbias, dresidual if ctx.has_residual else None, None, None


class _PairBatchNormReLU(torch.autograd.Function):
    """relu(bn(a) + shortcut_bn(b)) in training mode, a block's end whose shortcut is a projection;
    updates both batch-norms' running statistics."""

    @staticmethod
    def forward(ctx, a, weight, bias, b, shortcut_weight, shortcut_bias, bn: nn.BatchNorm2d,
                shortcut_bn: nn.BatchNorm2d, momentum: float, shortcut_momentum: float):
        b = b.contiguous(memory_format=_memory_format(a))
        y, mean, invstd, shortcut_mean, shortcut_invstd = EXTENSION.get().forward_pair(
            a, b, weight, bias, bn.running_mean, bn.running_var, momentum, bn.eps,
            shortcut_weight, shortcut_bias, shortcut_bn.running_mean, shortcut_bn.running_var, shortcut_momentum,
            shortcut_bn.eps)
        ctx.save_for_backward(a, b, y, weight, mean, invstd, shortcut_weight, shortcut_mean, shortcut_invstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b, y, weight, mean, invstd, shortcut_weight, shortcut_mean, shortcut_invstd = ctx.saved_tensors
        grads = EXTENSION.get().backward_pair(_like(dy, a), y, a, b, weight, mean, invstd, shortcut_weight,
                                              shortcut_mean, shortcut_invstd)
        return (*grads, None, None, None, None)


def fusable(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether relu(bn(x) + residual) can run fused: a training nn.BatchNorm2d with parameters and
    running statistics and no hooks, on a CPU tensor in NCHW or channels_last, where the kernels build."""
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats and not hooked(bn)
            and _kernel_input(x, residual))


def inferable(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether the evaluation-mode kernel applies: an nn.BatchNorm2d in eval mode with parameters and
    running statistics, no gradient wanted (a frozen BN of a fine-tuning run passes gradients, and
    this kernel has no backward), and not inside a trace or a compile, which must see the modules."""
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.affine and bn.track_running_stats
            and not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not hooked(bn)  # hooks (layer analyses) must see the module
            and _kernel_input(x, residual) and x.shape[1] == bn.num_features
            and (residual is None or residual.dtype == x.dtype))  # else the plain path's type promotion


def _kernel_input(x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    return (isinstance(x, torch.Tensor)  # not an FX proxy: a traced graph shows the plain modules
            and x.device.type == "cpu" and x.dtype in DTYPES and x.dim() == 4
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and (residual is None or residual.shape == x.shape)
            and EXTENSION.get() is not None)


def _next_momentum(bn: nn.BatchNorm2d) -> float:
    """The momentum nn.BatchNorm2d uses for its next training batch (momentum=None: a cumulative
    moving average over the batches so far, this one included)."""
    return 1.0 / (float(bn.num_batches_tracked) + 1.0) if bn.momentum is None else bn.momentum


def _counted(y: torch.Tensor, *bns: nn.BatchNorm2d) -> torch.Tensor:
    """y, once the batch-norms have counted the batch that made it, as nn.BatchNorm2d does; counted
    after the kernels ran, so that a call they refuse leaves every buffer as it was."""
    for bn in bns:
        bn.num_batches_tracked.add_(1)
    return y


def bn_relu(bn: nn.Module, x: torch.Tensor, relu, residual: torch.Tensor | None = None,
            fused: bool = False) -> torch.Tensor:
    """relu(bn(x) + residual) (no addition when residual is None): fused when asked and possible
    (training, or evaluation without gradients), else exactly the plain modules (so tracing,
    folding and quantizing see the usual graph)."""
    if fused and fusable(bn, x, residual):
        return _counted(_BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn, _next_momentum(bn)), bn)
    if fused and inferable(bn, x, residual):  # a training run's validation and test: one pass, not three
        return EXTENSION.get().inference(x, None if residual is None else _like(residual, x), bn.weight, bn.bias,
                                         bn.running_mean, bn.running_var, bn.eps)
    out = bn(x)
    if residual is not None:
        out = out + residual
    return relu(out)


def bn_relu_projected(bn: nn.Module, x: torch.Tensor, relu, shortcut_bn: nn.Module, shortcut: torch.Tensor,
                      fused: bool = False) -> torch.Tensor:
    """relu(bn(x) + shortcut_bn(shortcut)), the end of a post-activation block whose shortcut is a
    projection (shortcut its convolution's output): both batch-norms, the addition and ReLU as one
    kernel pair in training where both batch-norms can run fused, else bn_relu with the shortcut's
    batch-norm run as its module. Against the shortcut's batch-norm as PyTorch's own kernels and the
    block's fused with the residual, the pair saves writing and reading back the normalised
    shortcut and its gradient (benchmarks/fused_bn_layers.py --pair)."""
    if (fused and fusable(bn, x, shortcut) and fusable(shortcut_bn, shortcut) and shortcut.dtype == x.dtype
            and x.shape[1] == bn.num_features == shortcut_bn.num_features):
        y = _PairBatchNormReLU.apply(x, bn.weight, bn.bias, shortcut, shortcut_bn.weight, shortcut_bn.bias, bn,
                                     shortcut_bn, _next_momentum(bn), _next_momentum(shortcut_bn))
        return _counted(y, bn, shortcut_bn)
    return bn_relu(bn, x, relu, shortcut_bn(shortcut), fused=fused)


def set_fused_bn(model: nn.Module, enabled: bool = True) -> int:
    """Turn the fused batch-norm + ReLU on (or off) in every block of `model` that has it; returns
    how many modules were switched. State dicts are unaffected."""
    switched = 0
    for m in model.modules():
        if hasattr(m, "fused_bn"):
            m.fused_bn = enabled
            switched += 1
    return switched
