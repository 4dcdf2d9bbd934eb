"""What a command's CHECKPOINT argument names: a checkpoint file, a run directory, or published weights.

`load_source(arg)` gives (Artifact, label) either way. Published weights (models/pretrained.py)
become an `Artifact` (engine/records.py) in memory holding what evaluation, prediction, embedding and
export read from a trained run: the entry's model, kwargs and classes, a normaliser with the
publisher's mean/std, and a config whose data section is the publisher's evaluation preprocessing
(crop size, resize, interpolation). So every command treats `resnet50.tv2_in1k` and `runs/r56` alike,
with nothing in checkpoint.py that knows about weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from resnetlab.config import Config, DataConfig, ModelConfig, config_to_dict
from resnetlab.errors import UserError, expect_path

from .checkpoint import checkpoint_path, load_checkpoint
from .records import Artifact, Checkpoint

FILE_SUFFIXES = (".pt", ".pth", ".th", ".tar", ".bin", ".ckpt", ".safetensors", ".yaml")


def is_weights_name(arg) -> bool:
    """Not a path on disk, and shaped like a name rather than a file or folder."""
    text = str(arg)
    return (not Path(text).exists() and "/" not in text and os.sep not in text
            and not text.lower().endswith(FILE_SUFFIXES))


def find_weights(arg):
    """The published weights `arg` names; None when it names a path (an unknown name raises)."""
    if not is_weights_name(arg):
        return None
    from resnetlab.models.pretrained import get_weights

    try:
        return get_weights(str(arg))
    except UserError as err:
        raise UserError(f"{err}; as a file or run directory, {arg} does not exist") from None


def load_source(arg) -> tuple[Artifact, str]:
    """(artifact, label): label is the checkpoint's path or the weights' name. An Artifact or a
    Checkpoint (one already loaded) is passed through."""
    if isinstance(arg, Checkpoint):
        arg = arg.artifact
    if isinstance(arg, Artifact):
        return arg, arg.published_as or arg.model_name
    if not isinstance(arg, (str, os.PathLike)):  # bytes, None, a number: named here, not by pathlib
        raise UserError(f"expected a run directory, a checkpoint file or a published weights name (a str or a "
                        f"path), got {type(arg).__name__}")
    arg = expect_path(arg, "the run directory or checkpoint")  # "" (an unset variable) was the current folder
    entry = find_weights(arg)
    if entry is not None:
        return weights_artifact(entry), entry.name
    path = checkpoint_path(arg)
    return load_checkpoint(path).artifact, str(path)


def weights_artifact(entry, progress: bool = True) -> Artifact:
    """The published weights as an Artifact (model on CPU, in resnetlab's layout)."""
    from resnetlab.models.hub import pretrained_model

    model = pretrained_model(entry, progress=progress)
    pre = entry.preprocess
    imagenet = entry.dataset == "imagenet-1k"
    data = DataConfig(
        dataset=entry.dataset if entry.dataset in ("cifar10", "cifar100") else "folder", val_size=0,
        val_folder="test" if imagenet else "val",  # ImageNet's labelled val/ is the test set the accuracy is given on
        # CIFAR images are fed at their own 32 px; photos are resized to `resize`, then centre-cropped.
        augment="rrc" if imagenet else "cifar",
        normalize="imagenet" if imagenet else "channel",
        image_size=pre.input_size, eval_resize=pre.resize, interpolation=pre.interpolation)
    cfg = Config(model=ModelConfig(entry.model, entry.kwargs), data=data)
    return Artifact(
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        model_name=entry.model, model_kwargs=entry.kwargs, num_classes=entry.num_classes,
        classes=entry.classes, class_ids=entry.class_ids,
        normalizer={"kind": data.normalize, "mean": torch.tensor(pre.mean), "std": torch.tensor(pre.std)},
        config=config_to_dict(cfg), input_size=pre.input_size, eval_resize=pre.resize, published_as=entry.name)

