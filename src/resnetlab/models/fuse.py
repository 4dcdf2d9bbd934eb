"""Inference-time BatchNorm folding: conv -> BN becomes one conv with a bias.

In eval mode BN is a fixed per-channel affine map y = (x - mean) / sqrt(var + eps) * gamma + beta,
so it can be merged into the convolution that feeds it (torch.nn.utils.fusion.fuse_conv_bn_eval).
The pairs are found from the traced graph (a BN whose only input is a conv used nowhere else),
not from a table of block types, so every block in models/ -- basic, bottleneck, projection
shortcuts, and the conv -> BN pairs inside pre-activation blocks -- is covered. A BN that follows
a ReLU or an addition (pre-activation bn1, final_bn) has no conv to fold into and is kept.
The folded model is a copy with the same class and methods (forward_features, forward_head, ...).
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from resnetlab.errors import expect_type


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) for every BN that directly and only consumes a conv's output."""
    modules = dict(model.named_modules())
    pairs = []
    for node in fx.symbolic_trace(model).graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each conv -> BN pair folded into one biased conv.

    The original is untouched. Outputs agree with model.eval() up to float rounding (~1e-5
    relative in fp32); the folded copy is for inference only (its BNs no longer exist to train).
    """
    expect_type(model, nn.Module, "fuse_bn takes an nn.Module such as create_model('resnet20')")
    fused = copy.deepcopy(model).eval()
    for conv_name, bn_name in conv_bn_pairs(fused):
        conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
        _set(fused, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(fused, bn_name, nn.Identity())
    return fused


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
