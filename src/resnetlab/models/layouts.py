"""Third-party weight layouts, converted to resnetlab's exactly, or refused.

resnetlab's tensor names are torchvision's (conv1, bn1, layerN.M.convK/bnK, downsample.0/1, fc),
and so are timm's ResNet-50 and chenyaofo/pytorch-cifar-models': those load as they are.

akamaster/pytorch_resnet_cifar10 (and the many CIFAR repositories copied from it) differs twice:
the classifier is `linear` (projection shortcuts, if any, `shortcut`), and its option-A shortcut
pads the new channels on both sides,

    F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))

where resnetlab's ZeroPadShortcut pads after the identity. Loading such weights unchanged runs,
and scores near chance. Both are the same function of the input up to an order of the channels:
resnetlab channel r of a stage holds akamaster channel order[r]. A stage's order follows from the
previous one (the carried identity channels first, then the zero-padded ones), so permuting the
output channels of every block's last conv + BN, the input channels of every conv reading a
stage, and the classifier's inputs reproduces the publisher's outputs (up to float summation
order), in a plain resnetlab model that fine-tunes and exports like any other.
"""
from __future__ import annotations

import torch
from torch import nn

from resnetlab.errors import UserError

from .blocks import BasicBlock, Bottleneck
from .shortcuts import ZeroPadShortcut

LAYOUTS = ("auto", "resnetlab", "torchvision", "timm", "chenyaofo", "akamaster")
CIFAR_RENAMES = (("linear.", "fc."), (".shortcut.", ".downsample."))
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def detect(state: dict) -> str:
    """"akamaster" for the CIFAR-repository names (linear / shortcut), else "resnetlab"."""
    cifar = any(k.startswith("linear.") or ".shortcut." in k for k in state)
    return "akamaster" if cifar else "resnetlab"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UserError(f"unknown weights layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


def rename(state: dict, layout: str) -> dict:
    """Tensor names in resnetlab's terms (layout already resolved, never "auto")."""
    if layout != "akamaster":
        return state
    out = {}
    for key, value in state.items():
        for old, new in CIFAR_RENAMES:
            if key.startswith(old) or (old.startswith(".") and old in key):
                key = key.replace(old, new, 1)
        out[key] = value
    return out


def reorder(state: dict, model: nn.Module, layout: str) -> dict:
    """Channel order in resnetlab's terms; `state` already renamed and checked against the model."""
    if layout != "akamaster" or not _pads_channels(model):
        return state
    out = dict(state)
    for key, (dim, order) in akamaster_orders(model).items():
        if key in out:
            out[key] = out[key].index_select(dim, torch.tensor(order))
    return out


def _pads_channels(model: nn.Module) -> bool:
    return any(isinstance(m, ZeroPadShortcut) and m.cout > m.cin for m in model.modules())


def akamaster_orders(model: nn.Module) -> dict[str, tuple[int, list[int]]]:
    """{tensor name: (dim, order)}: resnetlab index r along dim takes the file's index order[r]."""
    if not hasattr(model, "stages") or not hasattr(model, "fc"):
        raise UserError(f"akamaster-layout weights fit resnetlab's ResNet models, not {type(model).__name__}")
    orders: dict[str, tuple[int, list[int]]] = {}
    order = list(range(model.conv1.out_channels))  # the stem's channels are never padded
    for s, stage in enumerate(model.stages()):
        for b, block in enumerate(stage):
            prefix = f"layer{s + 1}.{b}"
            if type(block) not in (BasicBlock, Bottleneck):
                raise UserError(f"cannot map akamaster-layout weights exactly onto {type(block).__name__} blocks "
                                "(only post-activation basic and bottleneck blocks); not loading them approximately")
            last = "conv2" if isinstance(block, BasicBlock) else "conv3"
            orders[f"{prefix}.conv1.weight"] = (1, order)
            new = _block_order(block, order, prefix)
            if isinstance(block.downsample, nn.Sequential):  # a projection reads the block input
                orders[f"{prefix}.downsample.0.weight"] = (1, order)
            orders[f"{prefix}.{last}.weight"] = (0, new)
            for t in BN_TENSORS:
                orders[f"{prefix}.{last.replace('conv', 'bn')}.{t}"] = (0, new)
            order = new
    orders["fc.weight"] = (1, order)
    return orders


def _block_order(block: nn.Module, order: list[int], prefix: str) -> list[int]:
    """The channel order of a block's output given its input's."""
    shortcut = block.downsample
    if isinstance(shortcut, ZeroPadShortcut) and shortcut.cout > shortcut.cin:
        pad = shortcut.cout // 4  # akamaster: planes // 4 zero channels before and planes // 4 after
        if shortcut.cout - shortcut.cin != 2 * pad or shortcut.stride != 2:
            raise UserError(f"{prefix}: an option-A shortcut {shortcut.cin}->{shortcut.cout} with stride "
                            f"{shortcut.stride} has no exact akamaster equivalent (it pads planes//4 on each "
                            "side of a stride-2 identity); not loading these weights approximately")
        carried = [pad + a for a in order]
        taken = set(carried)
        return carried + [a for a in range(shortcut.cout) if a not in taken]
    if isinstance(shortcut, nn.Sequential):  # projection: its outputs are computed, in the file's order
        return list(range(shortcut[0].out_channels))
    return order  # identity (or parameter-free option A without new channels)
