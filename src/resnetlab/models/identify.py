"""Which network of the registry a state dict holds, from its tensor names and shapes alone.

Weights that do not fit a model are most often another depth's or another family's (a ResNet-50
file given to a ResNet-18 run): saying so beats listing two hundred tensor names. The depth is
counted from the file (its convolutions outside the shortcuts, plus the classifier), and only the
registered networks of that depth are built, on the meta device, with the file's class count,
input channels, stem and shortcut kind, and compared shape for shape.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from resnetlab.errors import UserError

SHAPE_KEYS_IGNORED = ("num_batches_tracked",)  # older files lack them; loading fills them in


class Fit(NamedTuple):
    name: str
    kwargs: tuple  # ((key, value), ...): the builder arguments beyond the class count that differ from its defaults

    @property
    def arguments(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs)

    def __str__(self) -> str:
        return self.name + (f" ({self.arguments})" if self.kwargs else "")


class OtherNetwork(UserError):
    """Weights of another registered network than the model they were given to."""

    def __init__(self, fits: list[Fit], what: str):
        self.fits, self.what = fits, what  # what: "weights do not fit the model: they are ... and the model is ..."
        first = fits[0]
        super().__init__(f"{what}: build {first.name}{' with ' + first.arguments if first.kwargs else ''} to load them")


def identify(state: dict) -> list[Fit]:
    """The registered networks (and the builder arguments that differ from the defaults, e.g.
    resnet20 with shortcut='B') whose every tensor has the shape the file gives; [] if none or if the
    file is not a ResNet of resnetlab's (torchvision's) names. Two can fit alike: a plain net and its
    residual twin with parameter-free shortcuts."""
    from .registry import list_models, model_info

    fc, conv1 = state.get("fc.weight"), state.get("conv1.weight")
    if not _is_tensor(conv1, 4) or (fc is not None and not _is_tensor(fc, 2)):
        return []
    head = () if fc is not None else ("fc.weight", "fc.bias")  # a file without its classifier: the rest must fit
    want, depth, shortcut = _shapes(state, head), _depth(state), _shortcut_kind(state)
    names = [n for n in list_models() if model_info(n).depth == depth]
    names += [n for n in (f"resnet{depth}", f"plain{depth}") if (depth - 2) % 6 == 0 and n not in names]  # any 6n+2
    found = []
    for name in names:
        base = {"num_classes": fc.shape[0] if fc is not None else 1000, "in_chans": conv1.shape[1]}
        if model_info(name).family == "imagenet" and conv1.shape[-1] != 7:
            base["stem"] = "cifar"
        # the builder's own shortcut first, then the one the file's projections suggest (a second build)
        for extra in ({}, {"shortcut": shortcut}):
            if _shapes_of(name, {**base, **extra}, head) == want:
                found.append(Fit(name, tuple((k, v) for k, v in {**base, **extra}.items()
                                             if k in ("stem", "shortcut") or (k == "in_chans" and v != 3))))
                break
    return found


def mismatch(state: dict, own: dict) -> OtherNetwork | None:
    """"they are resnet50 weights (1000 classes), and the model is resnet18 ..." when the file is
    another registered network than the model; None when it is not one, or may be the same one."""
    theirs = identify(state)
    ours = identify(own) if theirs else []
    if not theirs or {f.name for f in theirs} & {f.name for f in ours}:
        return None  # the same network built otherwise (a shortcut, a class count): its keys say how
    classes = f" ({state['fc.weight'].shape[0]} classes)" if "fc.weight" in state else ""
    return OtherNetwork(theirs, f"weights do not fit the model: they are {' or '.join(map(str, theirs))} weights"
                                f"{classes}, and the model is {' or '.join(map(str, ours)) or 'another network'}")


def _shapes_of(name: str, kwargs: dict, skip: tuple) -> dict | None:
    from .registry import create_model

    try:
        with torch.device("meta"):  # shapes only: no memory, no init
            return _shapes(create_model(name, **kwargs).state_dict(), skip)
    except Exception:  # noqa: BLE001  a candidate that does not build with these arguments does not fit
        return None


def _shortcut_kind(state: dict) -> str:
    """A: no projections; C: one in every block; B: where the shape changes."""
    projections = {k.rsplit(".downsample.", 1)[0] for k in state if ".downsample." in k}
    blocks = {".".join(k.split(".")[:2]) for k in state if k.startswith("layer") and k.count(".") >= 2}
    return "A" if not projections else "C" if len(projections) == len(blocks) else "B"


def _depth(state: dict) -> int:
    """Weighted layers on the main path: the convolutions outside the shortcuts and the classifier."""
    convs = [k for k, v in state.items() if k.endswith(".weight") and _is_tensor(v, 4) and ".downsample." not in k]
    return len(convs) + 1


def _shapes(state: dict, skip: tuple = ()) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()
            if torch.is_tensor(v) and not k.endswith(SHAPE_KEYS_IGNORED) and k not in skip}


def _is_tensor(value, dims: int) -> bool:
    return torch.is_tensor(value) and value.dim() == dims
