"""Residual blocks of He et al. 2016 and their pre-activation forms (He et al., ECCV 2016).

Parameter names follow torchvision (conv1/bn1/.../downsample.0/downsample.1) so its
checkpoints load unchanged. `residual=False` turns a block into its plain twin: the same
layers with the shortcut removed, as in the paper's Fig. 3 (middle).
"""
from __future__ import annotations

import torch
from torch import nn

from . import bn_relu_conv, conv_direct, conv_wgrad
from . import pointwise as pointwise_route
from .bn_relu_conv import bn_relu_conv3x3
from .conv_direct import conv3x3_direct, conv3x3_direct_and_shortcut
from .conv_wgrad import conv3x3_own_wgrad, conv3x3_own_wgrad_and_shortcut
from .fused_bn import bn_relu, bn_relu_projected, fusable
from .pointwise import conv1x1_as_matmul, pointwise_and_shortcut
from .routes import hooked
from .shortcuts import ZeroPadShortcut, conv1x1, conv_and_zero_pad, entry_applies, make_shortcut
from .strided_conv import strided_conv


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def convolve(conv: nn.Conv2d, x: torch.Tensor, own_kernels: bool = False) -> torch.Tensor:
    """conv(x) for a block's convolution, by the route measured fastest for it in CPU training: a
    1x1 stride-1 one as a matrix product (`pointwise`, bf16), a wide stride-2 one with matrix-product
    gradients (models/strided_conv.py, bf16); where `own_kernels`, a narrow 3x3 stride-1 one or a
    CIFAR ResNet's stride-2 stage entry in fp32 on AVX-512 by resnetlab's direct kernels
    (models/conv_direct.py), a 3x3 stride-1 one in bf16 with resnetlab's weight-gradient kernel
    (AMX or AVX-512 BF16, models/conv_wgrad.py). Each steps aside to the module where it does not."""
    if own_kernels and conv_direct.applies(conv, x):
        return conv3x3_direct(conv, x)
    if conv.stride != (1, 1):
        return strided_conv(conv, x)
    if conv.kernel_size == (1, 1):
        return pointwise(conv, x)
    return conv3x3_own_wgrad(conv, x, own_kernels)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a bottleneck's 1x1, stride-1 convolution: in bf16 CPU training a matrix product
    over the pixels (models/pointwise.py), else the module itself."""
    return conv1x1_as_matmul(conv, x) if pointwise_route.applies(conv, x) else conv(x)


class Block(nn.Module):
    """What every block shares: the switch to resnetlab's own CPU training kernels, fused batch-norm
    + ReLU, in bf16 on AMX or Zen 4 the 3x3 convolutions' weight gradients, in fp32 on the other
    AVX-512 CPUs the narrow and stage-entry 3x3 convolutions, all three passes (set by
    models.fused_bn.set_fused_bn; a class default, so it never appears in a state_dict), every
    convolution's route (`convolve`) and, for post-activation blocks, the shortcut branch. Each
    block's residual_end() is the last layer of its residual branch: zeroing its weight makes the
    block start as the identity."""

    fused_bn = False
    residual: bool
    downsample: nn.Module | None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.residual:
            return None
        return x if self.downsample is None else self.project(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """self.downsample(x), a wide stride-2 projection's convolution with the matrix-product
        gradients of models/strided_conv.py; every other shortcut (or a hooked one) as the module."""
        ds = self.downsample
        if not (isinstance(ds, nn.Sequential) and not hooked(ds)):
            return ds(x)
        out = strided_conv(ds[0], x)  # the module itself where the route does not apply
        for layer in ds[1:]:
            out = layer(out)
        return out

    def conv1_and_shortcut(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conv1(x), the shortcut of x or None for `finish` to make it): one autograd node for both
        where the shortcut is parameter-free (identity, or option A unhooked) and conv1 takes the
        direct kernels (conv_direct.conv3x3_direct_and_shortcut), or enters a stage with option A
        (shortcuts.conv_and_zero_pad, oneDNN's convolution), or, with an identity shortcut that
        the block's fused batch-norm adds, is a bf16 1x1 matrix product (pointwise_and_shortcut) or a
        bf16 3x3 one with resnetlab's weight gradient (conv3x3_own_wgrad_and_shortcut), so that the
        shortcut's gradient joins conv1's input gradient as it is written; else conv1 by its route."""
        ds, conv = self.downsample, self.conv1
        if not (self.fused_bn and self.residual):
            return convolve(conv, x, self.fused_bn), None
        parameter_free = ds is None or (type(ds) is ZeroPadShortcut and not hooked(ds) and ds.cin == conv.in_channels
                                        and (ds.stride,) * 2 == conv.stride and ds.cout == conv.out_channels)
        if parameter_free and conv_direct.applies(conv, x):
            return conv3x3_direct_and_shortcut(conv, x, conv.out_channels)
        if parameter_free and ds is not None and entry_applies(conv, x):
            return conv_and_zero_pad(conv, x, ds.cout)
        if ds is None and fusable(self.residual_end(), x, x):  # (the last conv's output, shaped as x)
            if torch.is_grad_enabled() and pointwise_route.applies(conv, x):
                return pointwise_and_shortcut(conv, x)
            if conv_wgrad.applies(conv, x):
                return conv3x3_own_wgrad_and_shortcut(conv, x)
        return convolve(conv, x, self.fused_bn), None

    def normalised_conv(self, bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """conv(relu(bn(x))) inside a block: one node of the direct kernels where both halves would
        take resnetlab's own (models/bn_relu_conv.py: the normalised tensor never stored), else
        bn_relu, then conv by its route."""
        if self.fused_bn and bn_relu_conv.applies(bn, conv, x):
            return bn_relu_conv3x3(bn, conv, x)
        return convolve(conv, bn_relu(bn, x, self.relu, fused=self.fused_bn), self.fused_bn)

    def finish(self, bn: nn.BatchNorm2d, out: torch.Tensor, x: torch.Tensor,
               shortcut: torch.Tensor | None = None) -> torch.Tensor:
        """relu(bn(out) + shortcut(x)) (the shortcut given, or made here), a post-activation block's
        end. With a projection shortcut (1x1 conv + BN) in fused training, the projection's batch-norm
        joins the block's in one kernel pair (fused_bn.bn_relu_projected); a hooked shortcut runs as
        the module."""
        ds = self.downsample
        if (self.fused_bn and self.residual and isinstance(ds, nn.Sequential) and len(ds) == 2
                and isinstance(ds[1], nn.BatchNorm2d) and not hooked(ds)):
            return bn_relu_projected(bn, out, self.relu, ds[1], strided_conv(ds[0], x), fused=True)
        return bn_relu(bn, out, self.relu, self.shortcut(x) if shortcut is None else shortcut, fused=self.fused_bn)


class BasicBlock(Block):
    """Two 3x3 convolutions (Fig. 5 left); BN after each conv, ReLU after the addition."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, shortcut: str = "B", residual: bool = True,
                 stride_on: str = "3x3"):
        super().__init__()  # stride_on changes nothing here: of two 3x3 convs the first takes the stride
        cout = width * self.expansion
        self.conv1 = conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, cin, cout, stride) if residual else None

    def residual_end(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, shortcut = self.conv1_and_shortcut(x)
        return self.finish(self.bn2, self.normalised_conv(self.bn1, self.conv2, out), x, shortcut)


class Bottleneck(Block):
    """1x1 reduce, 3x3, 1x1 expand (Fig. 5 right), expansion 4.

    stride_on="3x3" puts the stride in the 3x3 conv (torchvision's "v1.5", slightly more
    accurate); "1x1" puts it in the first 1x1 conv as in the original paper and Table 1's FLOPs.
    """

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, shortcut: str = "B", residual: bool = True,
                 stride_on: str = "3x3"):
        super().__init__()
        cout = width * self.expansion
        s1, s3 = (1, stride) if stride_on == "3x3" else (stride, 1)
        self.conv1 = conv1x1(cin, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, cin, cout, stride) if residual else None

    def residual_end(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, shortcut = self.conv1_and_shortcut(x)
        out = bn_relu(self.bn2, self.normalised_conv(self.bn1, self.conv2, out), self.relu, fused=self.fused_bn)
        return self.finish(self.bn3, convolve(self.conv3, out, self.fused_bn), x, shortcut)


class PreActBasicBlock(Block):
    """BN-ReLU-conv ordering (He et al., "Identity Mappings in Deep Residual Networks", Fig. 1b).

    The addition is the block's output: nothing is applied after it, so the identity path
    runs unchanged from the first block to the last.
    """

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, shortcut: str = "B", residual: bool = True,
                 stride_on: str = "3x3"):
        super().__init__()  # stride_on changes nothing here: of two 3x3 convs the first takes the stride
        cout = width * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, cout)
        self.relu = nn.ReLU(inplace=False)  # the pre-activated input is reused by the shortcut
        self.residual = residual
        self.downsample = make_shortcut(shortcut, cin, cout, stride, preact=True) if residual else None

    def residual_end(self) -> nn.Module:
        return self.conv2  # pre-activation: the branch ends in a convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:  # the pre-activated input feeds conv1 alone: it need not be stored
            out = self.normalised_conv(self.bn1, self.conv1, x)
        else:
            pre = bn_relu(self.bn1, x, self.relu, fused=self.fused_bn)
            out = convolve(self.conv1, pre, self.fused_bn)
        out = self.normalised_conv(self.bn2, self.conv2, out)
        if not self.residual:
            return out
        # A projection sees the normalised input (as in the authors' code); identity sees x itself.
        return out + (x if self.downsample is None else self.project(pre))


class PreActBottleneck(Block):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, shortcut: str = "B", residual: bool = True,
                 stride_on: str = "3x3"):
        super().__init__()
        cout = width * self.expansion
        s1, s3 = (1, stride) if stride_on == "3x3" else (stride, 1)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv1x1(cin, width, s1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, cout)
        self.relu = nn.ReLU(inplace=False)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, cin, cout, stride, preact=True) if residual else None

    def residual_end(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = bn_relu(self.bn1, x, self.relu, fused=self.fused_bn)
        out = self.normalised_conv(self.bn2, self.conv2, convolve(self.conv1, pre, self.fused_bn))
        out = convolve(self.conv3, bn_relu(self.bn3, out, self.relu, fused=self.fused_bn), self.fused_bn)
        if not self.residual:
            return out
        return out + (x if self.downsample is None else self.project(pre))
