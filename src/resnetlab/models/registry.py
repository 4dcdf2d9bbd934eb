"""The model registry: a name -> builder table with the metadata the CLI and recipes need."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from resnetlab.errors import UserError, expect_type
from resnetlab.guest import float32_default

from .resnet import ResNet, cifar_resnet

FAMILIES = ("imagenet", "cifar")  # the paper's two kinds of network: 224 px ImageNet, 32 px CIFAR


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "imagenet" (224 px input) or "cifar" (32 px)
    depth: int
    residual: bool
    preact: bool

    @property
    def input_size(self) -> int:
        return 224 if self.family == "imagenet" else 32


_MODELS: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(family: str, depth: int, residual: bool = True, preact: bool = False):
    def wrap(builder):
        name = builder.__name__
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        if family not in FAMILIES:
            raise RuntimeError(f"model {name!r}: family {family!r} is not one of {FAMILIES}")
        _MODELS[name] = (builder, ModelInfo(name, family, depth, residual, preact))
        return builder
    return wrap


def list_models() -> list[str]:
    """The registered names, ImageNet nets first; any CIFAR depth 6n+2 (resnet74, plain74) builds too."""
    return list(_MODELS)


def model_info(name: str) -> ModelInfo:
    """What `name` is (family, depth, residual, pre-activation, native input size) without building
    it; an unknown name is a UserError that lists the known ones."""
    depth = _cifar_depth(name)
    if depth is not None:
        return ModelInfo(name, "cifar", depth, residual=name.startswith("resnet"), preact=False)
    return _MODELS[_known(name)][1]


MAX_CIFAR_DEPTH = 10_000  # resnet60000002 built for ever, growing to every byte of memory

# Keyword arguments a builder passes on to ResNet (everything but the architecture itself).
BUILDER_KWARGS = [p for p in inspect.signature(ResNet).parameters if p not in ("block", "layers", "widths")]


def create_model(name: str, *, weights: str | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model: `create_model("resnet50", num_classes=100, shortcut="C")`.

    Published weights (models/pretrained.py) by tag or name: `create_model("resnet50",
    weights="tv2_in1k")`, `create_model("resnet50.tv2_in1k", pretrained=True)`, or
    `create_model("resnet50", pretrained=True)` for the model's default weights. The weights bring
    their architecture arguments and class count; another num_classes keeps the backbone and starts
    a new classifier (fine-tuning). stride_on= places the stride of bottleneck blocks (resnet50 and
    deeper); nets of basic blocks take it and are unchanged. The model is float32 whatever torch's
    default dtype (resnetlab's inputs, normalisers and compiled packages are float32)."""
    expect_type(name, str, "create_model takes a model name such as 'resnet50' (list_models() names them)")
    model_name, _, tag = name.partition(".")
    if tag or weights is not None or pretrained:
        return _create_pretrained(model_name, tag or None, weights, pretrained, kwargs)
    depth = _cifar_depth(name)
    if depth is not None:  # any 6n+2 CIFAR depth, e.g. "resnet74" or "plain74" (Sec. 4.2)
        builder = lambda **kw: cifar_resnet(depth, residual=name.startswith("resnet"), **kw)  # noqa: E731
    else:
        builder = _MODELS[_known(name)][0]
    info = model_info(name)
    if info.family == "cifar" and "stem" in kwargs:
        raise UserError(f"{name!r} is a CIFAR net and always has the 3x3 stem; stem= chooses the stem of the "
                        "ImageNet nets (e.g. resnet18 with stem='cifar' for 32 px images)")
    if kwargs.pop("residual", info.residual) != info.residual:
        raise UserError(f"{name!r} is {'residual' if info.residual else 'plain'}: pick its twin instead")
    kwargs = _checked(name, kwargs, [k for k in BUILDER_KWARGS if info.family != "cifar" or k != "stem"])
    with float32_default():  # a float64 default (scientific notebooks) gave float64 weights fed float32 inputs
        return builder(**kwargs)


def _create_pretrained(model_name: str, tag: str | None, weights: str | None, load: bool, kwargs: dict) -> nn.Module:
    from . import hub, pretrained

    if tag and weights is not None and weights not in (tag, f"{model_name}.{tag}"):
        raise UserError(f"{model_name}.{tag} names weights {tag!r} but weights={weights!r} asks for others; give one")
    if weights is not None or tag:
        entry = pretrained.weights_for(model_name, tag if weights is None else weights)
        load = load or weights is not None
    else:
        entry = pretrained.default_weights(model_name)
    for key, value in entry.model_kwargs:
        if kwargs.get(key, value) != value:
            raise UserError(f"weights {entry.name!r} were trained with {key}={value!r}, not {kwargs[key]!r}; "
                            f"drop {key}= or choose other weights")
    num_classes = kwargs.pop("num_classes", entry.num_classes)
    model = create_model(entry.model, num_classes=num_classes, **{**entry.kwargs, **kwargs})
    if load:
        hub.load_pretrained(model, entry, ignore_mismatched_head=num_classes != entry.num_classes)
    return model


def _checked(name: str, kwargs: dict, valid: list[str]) -> dict:
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise UserError(f"unknown argument(s) {', '.join(unknown)} for model {name!r}; valid: {', '.join(valid)}")
    return kwargs


def _cifar_depth(name: str) -> int | None:
    match = re.fullmatch(r"(resnet|plain)(\d{1,12})", name)
    if name in _MODELS or not match:
        return None
    depth = int(match.group(2))
    if depth > MAX_CIFAR_DEPTH and (depth - 2) % 6 == 0:  # a name in a recipe or a crafted checkpoint: no endless build
        raise UserError(f"{name!r}: CIFAR depths up to {MAX_CIFAR_DEPTH} are built (the paper's deepest is resnet1202; "
                        f"resnet{MAX_CIFAR_DEPTH - 2} has ~160M parameters)")
    return depth if depth >= 8 and (depth - 2) % 6 == 0 else None


def _known(name: str) -> str:
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(_MODELS)} "
                        "(or resnetN / plainN for any CIFAR depth N = 6n+2)")
    return name
