"""ResNets as feature extractors: multi-scale maps for detectors, pooled embeddings for retrieval.

    backbone = FeatureExtractor(create_model("resnet50"), frozen_bn=True)
    feats = backbone(images)          # OrderedDict C2..C5: (B, 256, H/4, W/4) ... (B, 2048, H/32, W/32)
    backbone.out_channels, backbone.strides   # {"C2": 256, ...}, {"C2": 4, ...}

Maps are named C<k> with stride 2**k (the FPN convention): C2..C5 for ImageNet nets, C0..C2
for CIFAR nets (strides 1, 2, 4).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from resnetlab.errors import UserError


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters).

    What the paper's Faster R-CNN backbone used (Sec. 4.3 / Appendix A: BN layers are fixed
    after pre-training): detection batches of one or two images give useless statistics.
    """

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        affine = bn.weight is not None
        c = bn.num_features
        self.register_buffer("weight", bn.weight.detach().clone() if affine else torch.ones(c))
        self.register_buffer("bias", bn.bias.detach().clone() if affine else torch.zeros(c))
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.eps = bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm2d weights load unchanged: its step counter has no meaning once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` (in place) by a FrozenBatchNorm2d; returns module."""
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d(module)
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def stage_names(strides: list[int]) -> list[str]:
    return [f"C{int(math.log2(s))}" for s in strides]


class FeatureExtractor(nn.Module):
    """A ResNet without its classifier, returning the feature map of each requested stage.

    `stages`: names to return (default all, e.g. ("C3", "C4", "C5") for an FPN). `frozen_bn`
    swaps every BatchNorm for FrozenBatchNorm2d. Pre-activation nets get their final BN-ReLU
    on the last stage, as their forward_features does.
    """

    def __init__(self, model: nn.Module, stages: tuple[str, ...] | None = None, frozen_bn: bool = False):
        super().__init__()
        for attr in ("forward_stem", "stages", "stage_channels", "stage_strides"):
            if not hasattr(model, attr):
                raise UserError(f"FeatureExtractor needs a resnetlab ResNet (missing {attr}); got {type(model).__name__}")
        names = stage_names(model.stage_strides)
        if isinstance(stages, str):  # iterated, "C3" would be the stages "C" and "3"
            raise UserError(f"stages takes a list of names such as ('C3', 'C4'), got the string {stages!r}: "
                            f"write stages=({stages!r},)")
        wanted = list(names) if stages is None else list(stages)
        unknown = [s for s in wanted if s not in names]
        if unknown or not wanted:
            raise UserError(f"unknown feature stage(s) {', '.join(unknown) or '(none given)'}; this model has {', '.join(names)}")
        self.model = freeze_batchnorm(model) if frozen_bn else model
        self.names = names
        self.return_stages = [n for n in names if n in wanted]  # always in network order
        self.out_channels = OrderedDict((n, c) for n, c in zip(names, model.stage_channels) if n in wanted)
        self.strides = OrderedDict((n, s) for n, s in zip(names, model.stage_strides) if n in wanted)
        self.depth_needed = max(names.index(n) for n in wanted) + 1  # later stages are not run

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        m = self.model
        x = m.forward_stem(x)
        out = OrderedDict()
        for i, (name, stage) in enumerate(zip(self.names[: self.depth_needed], m.stages())):
            x = stage(x)
            if i == len(self.names) - 1 and getattr(m, "final_bn", None) is not None:
                x = torch.relu(m.final_bn(x))
            if name in self.return_stages:
                out[name] = x
        return out


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised input -> (B, num_features): the globally pooled last feature map."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
