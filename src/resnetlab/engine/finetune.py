"""Fine-tuning: start from other weights, freeze the stem and early stages, slower backbone.

`freeze_stages = k` freezes the stem (conv1, bn1) and the first k stages: their parameters get
requires_grad=False and their BatchNorm layers stay in eval mode, so neither the weights nor
the running statistics move. `freeze_bn` does the same for every BatchNorm in the net (useful
with small batches, whose statistics are noisy).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from torch import nn

from resnetlab.config import FinetuneConfig
from resnetlab.errors import UserError, option
from resnetlab.models import load_weights
from resnetlab.models.identify import OtherNetwork
from resnetlab.models.weights import _read_file as read_weights_file, refuse_nonfinite, safetensors_metadata

from .checkpoint import FORMAT, checkpoint_path, verify_digest
from .records import Checkpoint

HEAD_PREFIX = "fc."


class InitLoad(NamedTuple):
    skipped: list[str]  # keys left at their fresh init (a classifier of another class count)
    head: str | None = None  # how the classifier's rows were matched to the run's classes by name, if they were


def load_init_weights(model: nn.Module, source, model_name: str | None = None,
                      classes: list[str] | None = None) -> InitLoad:
    """Load pretrained weights (a weights file, a resnetlab checkpoint, whose digest is checked, a
    run directory, meaning its best.pt else last.pt, or published weights by name, e.g.
    resnet50.tv2_in1k); a classifier of another class count is left at its fresh init. `model_name`
    (the run's model) lets a checkpoint of another model be answered in one line rather than with the
    keys that do not fit. With `classes` (the run's) and a resnetlab checkpoint, which names its classes,
    the classifier's rows follow the names: a class of both keeps its row wherever it stands, any other
    starts fresh (by position, bird took airplane's row, and a 3-class run of other classes kept a head
    for classes it does not have)."""
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}
    skipped, named = _load_init(model, source, model_name)
    check_finite_weights(model, skipped, source)
    if classes is None or named is None or list(named[0]) == list(classes):
        return InitLoad(skipped)
    head = match_head(model, fresh, named, list(classes))
    check_finite_weights(model, [], source)  # rows of a head another class count left unchecked above
    return InitLoad([], head)


def match_head(model: nn.Module, fresh: dict, named: tuple, classes: list[str]) -> str:
    """Set the classifier's rows by class name (`named`: the init's classes and classifier tensors)."""
    old = {name: i for i, name in enumerate(named[0])}
    state = dict(fresh)
    for key, tensor in named[1].items():
        if fresh[key].shape[1:] != tensor.shape[1:]:
            continue  # another feature width: check_same_model refused another network before this
        for i, name in enumerate(classes):
            if name in old:
                state[key][i] = tensor[old[name]]
    model.load_state_dict(state, strict=False)
    kept = [c for c in classes if c in old]
    new = [c for c in classes if c not in old]
    return (f"classifier rows matched by class name: {len(kept)} kept" + (f" ({', '.join(kept[:5])}"
            f"{', ...' if len(kept) > 5 else ''})" if kept else "") + (f", {len(new)} new ({', '.join(new[:5])}"
            f"{', ...' if len(new) > 5 else ''})" if new else ""))


def _load_init(model: nn.Module, source, model_name: str | None) -> tuple[list[str], tuple | None]:
    from resnetlab.models.hub import check_fits, load_pretrained

    from .sources import find_weights

    entry = find_weights(source)
    if entry is not None:
        try:
            check_fits(model, entry, ignore_mismatched_head=True)
        except UserError as err:
            raise UserError(f"{err}. {_train_it(entry.model, entry.model_kwargs)}") from None
        return load_pretrained(model, entry, ignore_mismatched_head=True).skipped, None
    label, named = source, None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = checkpoint_path(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file() and Path(source).suffix != ".safetensors":
        payload = read_weights_file(Path(source))
        if isinstance(payload, dict) and payload.get("format") == FORMAT:
            verify_digest(payload, source)
            artifact = Checkpoint.from_dict(payload, source).artifact
            check_same_model(artifact.model_name, label, model_name)
            check_same_build(artifact.model_name, artifact.num_classes, dict(artifact.model_kwargs), model, label)
            payload = artifact.weights
            head = {k: v for k, v in payload.items() if k.startswith(HEAD_PREFIX)}
            named = (list(artifact.classes), head) if artifact.classes and head else None
        source = payload
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_file():  # a safetensors export names its model
        held = exported_model_name(Path(source))
        if held:
            check_same_model(held, label, model_name)
            check_same_build(held, None, exported_model_kwargs(Path(source)), model, label)
            named = _export_head(Path(source))
    try:
        return load_weights(model, source, ignore_mismatched_head=True, label=label).skipped, named
    except OtherNetwork as err:  # a plain file of another registered network: which one, and how to train it
        raise UserError(f"{err.what}. {_train_it(err.fits[0].name, err.fits[0].kwargs)}") from None


def _train_it(name: str, kwargs) -> str:
    flag = option(" --set ", " ")  # a Python caller's overrides: model.name=resnet50 model.kwargs.stem=cifar
    return f"To fine-tune them, train {name}:{flag}model.name={name}" + "".join(
        f"{flag}model.kwargs.{k}={v}" for k, v in kwargs)


def exported_model_name(path: Path) -> str | None:
    """The model_name a resnetlab safetensors export records in its metadata (None for other files:
    load_weights reads those, and says what is wrong with them)."""
    name = _export_metadata(path).get("model_name")
    return name if isinstance(name, str) else None


def exported_model_kwargs(path: Path) -> dict:
    """The model_kwargs a resnetlab safetensors export records ({} for other files)."""
    kwargs = _export_metadata(path).get("model_kwargs")
    return kwargs if isinstance(kwargs, dict) else {}


def _export_head(path: Path) -> tuple | None:
    """(the classes a resnetlab safetensors export names, its classifier tensors), as a checkpoint gives them."""
    from safetensors import safe_open

    classes = _export_metadata(path).get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return None
    with safe_open(str(path), framework="pt") as f:
        head = {k: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD_PREFIX)}
    return (classes, head) if head else None


def _export_metadata(path: Path) -> dict:
    try:
        meta = json.loads(safetensors_metadata(path).get("resnetlab", "{}"))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def check_finite_weights(model: nn.Module, skipped: list[str], source) -> None:
    """The init weights as loaded into `model` (a plain weights file has no other check), NaN or inf refused."""
    label = source if isinstance(source, (str, os.PathLike)) else "the init weights"
    refuse_nonfinite({k: v for k, v in model.state_dict().items() if k not in skipped}, label)


def check_same_model(held: str, label, model_name: str | None) -> None:
    """A resnetlab checkpoint of another network than the run's: say which, in one line."""
    if model_name and held != model_name:
        raise UserError(f"{label} holds a {held}; this run trains {model_name}: set {option('--model ', 'model.name=')}"
                        f"{held} to fine-tune it, or choose weights of a {model_name}")


def check_same_build(name: str, num_classes: int | None, kwargs: dict, model: nn.Module, label) -> None:
    """The checkpoint's network built with other arguments than the run's (stride_on, a shortcut option):
    loaded silently where every shape agreed (stride_on moves a stride and keeps them), refused in one line."""
    import torch

    from resnetlab.models import create_model
    from resnetlab.models.hub import architecture_differences

    with torch.device("meta"):  # shapes and layer settings only
        held = create_model(name, **({"num_classes": num_classes} if num_classes else {}), **kwargs)
    differ = architecture_differences(held, model, skip_head=True)
    if differ:
        text = ", ".join(f"{k}: {v}" for k, v in kwargs.items())
        raise UserError(f"{label} holds a {name} built with {{{text}}}; this run builds it otherwise (first of "
                        f"{len(differ)} differences: {differ[0]}): set "
                        + option(f"--set 'model.kwargs={{{text}}}'", f"model.kwargs={{{text}}}") + " to fine-tune it "
                        "as it was trained")


def _stages(model: nn.Module) -> list[nn.Module]:
    return list(model.stages()) if hasattr(model, "stages") else []


def frozen_modules(model: nn.Module, freeze_stages: int) -> list[nn.Module]:
    """The stem and the first `freeze_stages` stages (nothing for -1)."""
    if freeze_stages < 0:
        return []
    stages = _stages(model)
    if freeze_stages > len(stages):
        raise UserError(f"finetune.freeze_stages={freeze_stages} but the model has {len(stages)} stages; "
                        f"use -1 (nothing), 0 (stem) ... {len(stages)} (whole backbone)")
    return [model.conv1, model.bn1] + stages[:freeze_stages]


def _batchnorms(modules) -> list[nn.Module]:
    return [m for root in modules for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def apply_freezing(model: nn.Module, cfg: FinetuneConfig) -> list[nn.Module]:
    """Turn off gradients of the frozen parts; returns the BatchNorm layers to keep in eval mode."""
    frozen = frozen_modules(model, cfg.freeze_stages)
    for module in frozen:
        module.requires_grad_(False)
    eval_bns = _batchnorms(frozen)
    if cfg.freeze_bn:
        eval_bns = _batchnorms([model])
        for bn in eval_bns:
            bn.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("fine-tuning settings freeze every parameter; lower finetune.freeze_stages")
    return eval_bns


def set_train_mode(model: nn.Module, eval_bns: list[nn.Module]) -> None:
    """model.train(), except the frozen BatchNorms, which keep using (and keeping) their statistics."""
    model.train()
    for bn in eval_bns:
        bn.eval()


def param_groups(model: nn.Module, backbone_lr_mult: float) -> list[dict]:
    """Trainable parameters in two groups: the backbone (lr * backbone_lr_mult) and the classifier.

    Each group carries its `lr_mult`; the training loop sets group lr = schedule lr * lr_mult.
    """
    if backbone_lr_mult < 0:
        raise UserError(f"finetune.backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    backbone = [p for n, p in named if not n.startswith(HEAD_PREFIX)]
    head = [p for n, p in named if n.startswith(HEAD_PREFIX)]
    groups = [{"params": backbone, "lr_mult": backbone_lr_mult}, {"params": head, "lr_mult": 1.0}]
    return [g for g in groups if g["params"]]


def without_init_warning(cfg: FinetuneConfig) -> str | None:
    """The line for fine-tuning settings given without weights to fine-tune (`--recipe finetune` with
    no --init): a slowed or frozen backbone that starts random trains badly, and nothing else says so."""
    if cfg.init is not None:
        return None
    settings = ([f"finetune.backbone_lr_mult={cfg.backbone_lr_mult:g}"] if cfg.backbone_lr_mult != 1 else []) + (
        [f"finetune.freeze_stages={cfg.freeze_stages}"] if cfg.freeze_stages >= 0 else []) + (
        ["finetune.freeze_bn"] if cfg.freeze_bn else []) + (["finetune.linear_probe"] if cfg.linear_probe else [])
    if not settings:
        return None
    return (f"{', '.join(settings)} {'is' if len(settings) == 1 else 'are'} for pretrained weights, but finetune.init is "
            "not set, so the backbone starts from random weights; " + option(
                "pass --init WEIGHTS (`resnetlab weights list`); to train from scratch, use a recipe made for it "
                "(photos_scratch, or no --recipe and --init none)", "set finetune.init (`resnetlab weights list` "
                "names published weights); to train from scratch, use a recipe made for it (photos_scratch)"))
