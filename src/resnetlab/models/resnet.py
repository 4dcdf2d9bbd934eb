"""One ResNet class for every network of the paper: ImageNet (Sec. 3.4, Table 1) and CIFAR (Sec. 4.2).

The two families differ only in their stem (7x7/2 conv + max-pool vs one 3x3 conv), their
stage widths (64..512 vs 16..64) and their default shortcut (B vs A); everything else --
blocks, `_make_layer`, pooling, classifier, initialisation -- is shared.
"""
from __future__ import annotations

import torch
from torch import nn

from resnetlab.errors import UserError, expect_count, expect_type

from . import blocks
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .fused_bn import bn_relu

PREACT_BLOCKS = (PreActBasicBlock, PreActBottleneck)
SHORTCUTS = ("A", "B", "C")
STEMS = ("imagenet", "cifar")
STRIDE_ON = ("3x3", "1x1")


class ResNet(nn.Module):
    fused_bn = False  # the stem's BN + ReLU (and pre-activation nets' final ones); see models/fused_bn.py

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        widths: tuple[int, ...] = (64, 128, 256, 512),
        *,
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        shortcut: str = "B",
        residual: bool = True,
        stride_on: str = "3x3",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        _check_choice("shortcut", shortcut, SHORTCUTS)
        _check_choice("stem", stem, STEMS)
        _check_choice("stride_on", stride_on, STRIDE_ON)
        expect_type(zero_init_residual, bool, "zero_init_residual takes True or False")  # "no" is truthy
        if zero_init_residual and not residual:
            raise UserError("zero_init_residual=True would zero every block of a plain net (residual=False)")
        num_classes, in_chans = expect_count("num_classes", num_classes), expect_count("in_chans", in_chans)
        self.preact = block in PREACT_BLOCKS
        self.residual = residual
        self.num_classes = num_classes

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            stem_stride = 4
        else:  # cifar
            self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
            # Pre-activation CIFAR nets start straight with the first block's BN-ReLU.
            self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(widths[0])
            self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            stem_stride = 1

        cin = widths[0]
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        for i, (width, depth) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            layer, cin = self._make_layer(block, cin, width, depth, stride,
                                          dict(shortcut=shortcut, residual=residual, stride_on=stride_on))
            self.add_module(f"layer{i + 1}", layer)
            self.stage_channels.append(cin)
            self.stage_strides.append(stem_stride * 2**i)
        self.num_stages = len(layers)
        # Pre-activation nets end with BN-ReLU: the last addition has not been normalised yet.
        self.final_bn = nn.BatchNorm2d(cin) if self.preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        try:
            self.fc = nn.Linear(cin, num_classes)
        except (RuntimeError, MemoryError) as err:  # torch's allocator failure is a paragraph of C++
            if "allocat" not in str(err) and not isinstance(err, MemoryError):
                raise
            raise UserError(f"num_classes={num_classes}: its classifier needs {4 * (cin + 1) * num_classes / 1e9:.3g} "
                            "GB, more memory than this machine can give") from None
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_layer(block, cin, width, blocks, stride, options: dict):
        """One stage: `blocks` blocks, the first with `stride`; options (shortcut, residual,
        stride_on) are the same for every block of the network."""
        layers = []
        for i in range(blocks):
            layers.append(block(cin, width, stride if i == 0 else 1, **options))
            cin = width * block.expansion
        return nn.Sequential(*layers), cin

    def _init_weights(self, zero_init_residual: bool) -> None:
        if self.fc.weight.is_meta:  # shape-only models (profiling) have no values to initialise
            return
        # He et al. 2015 ("Delving deep into rectifiers"), as the paper says in Sec. 3.4.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al., arXiv:1706.02677, Sec. 5.1).
            for m in self.modules():
                if hasattr(m, "residual_end"):
                    nn.init.zeros_(m.residual_end().weight)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # Under the same switch as the blocks' kernels: the CIFAR stem's 3 -> 16 convolution's forward
        # pass in the direct kernel where it applies (fp32 training on AVX-512; models/conv_direct.py)
        out = blocks.conv3x3_direct(self.conv1, x) if self.fused_bn else self.conv1(x)
        return self.maxpool(bn_relu(self.bn1, out, self.relu, fused=self.fused_bn))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature map after each stage: C2..C5 at strides 4..32 for ImageNet nets (the
        detection backbone of Sec. 4.3), strides 1, 2, 4 for CIFAR nets."""
        x = self.forward_stem(x)
        feats = []
        for stage in self.stages():
            x = stage(x)
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> last feature map (B, num_features, H/32, W/32) (CIFAR: H/4)."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            x = bn_relu(self.final_bn, x, torch.relu, fused=self.fused_bn)
        return x

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(feat), 1)  # (B, num_features): the image embedding
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def imagenet_resnet(block, layers, *, stem: str = "imagenet", **kwargs) -> ResNet:
    """stem="cifar" swaps the 7x7/2 conv + max-pool for one 3x3 conv, so 32 px images keep their
    resolution into layer1 (4x4 maps in layer4 instead of 1x1): the usual ResNet-18 for CIFAR."""
    kwargs.setdefault("shortcut", "B")  # Table 3: B is the paper's choice for the ImageNet nets
    return ResNet(block, layers, (64, 128, 256, 512), stem=stem, **kwargs)


def cifar_resnet(depth: int, *, bottleneck: bool = False, preact: bool = False, **kwargs) -> ResNet:
    """CIFAR nets of Sec. 4.2: 6n+2 layers with basic blocks (9n+2 with bottlenecks), 16/32/64 filters."""
    per_block = 9 if bottleneck else 6
    if depth < per_block + 2 or (depth - 2) % per_block:
        form = "9n+2 (bottleneck)" if bottleneck else "6n+2"
        raise UserError(f"a CIFAR ResNet has depth {form} with n >= 1, got {depth}")
    n = (depth - 2) // per_block
    block = {(False, False): BasicBlock, (True, False): Bottleneck,
             (False, True): PreActBasicBlock, (True, True): PreActBottleneck}[(bottleneck, preact)]
    kwargs.setdefault("num_classes", 10)
    # Option A for the plain-vs-residual comparison (same parameters); projections for pre-act nets,
    # as in the Identity Mappings paper's code.
    kwargs.setdefault("shortcut", "B" if preact else "A")
    return ResNet(block, [n, n, n], (16, 32, 64), stem="cifar", **kwargs)
