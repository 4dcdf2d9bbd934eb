"""The normaliser fine-tuning feeds the --init weights: the one they were trained with, where it is known.

Features are learnt on inputs normalised one way; the same images normalised another way are other
inputs. A ResNet-20 trained with CIFAR's per-pixel mean scored 83.7% on its own test images and 41.3%
through the ImageNet mean/std the finetune recipe gave it, and the run said nothing. So a new run that
starts from weights takes their normaliser: a resnetlab run's or checkpoint's own, a resnetlab
safetensors export's, published weights' mean/std. A plain weights file records none: data.normalize is
fitted (or taken) as for any run. `finetune.init_normalizer=false` fits data.normalize on the new data.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from resnetlab.config import FinetuneConfig
from resnetlab.data.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from resnetlab.errors import UserError, option
from resnetlab.models.weights import _read_file as read_weights_file, safetensors_metadata

from .checkpoint import FORMAT, checkpoint_path, verify_digest
from .records import Checkpoint
from .sources import find_weights


def init_normalizer(cfg: FinetuneConfig) -> tuple[Normalizer, str] | None:
    """(the normaliser of the --init weights, where it comes from), or None (no init, a plain weights
    file, or finetune.init_normalizer off)."""
    if not cfg.init or not cfg.init_normalizer:
        return None
    entry = find_weights(cfg.init)
    if entry is not None:
        mean, std = tuple(entry.preprocess.mean), tuple(entry.preprocess.std)
        kind = "imagenet" if (mean, std) == (IMAGENET_MEAN, IMAGENET_STD) else "channel"
        return Normalizer(kind, torch.tensor(mean), torch.tensor(std)), f"the mean/std {entry.name} was trained with"
    path = Path(str(cfg.init)).expanduser()
    state = None
    if path.suffix == ".safetensors" and path.is_file():
        try:
            state = json.loads(safetensors_metadata(path).get("resnetlab", "{}")).get("normalizer")
        except (ValueError, AttributeError):
            state = None
    elif path.exists():
        path = checkpoint_path(path) if path.is_dir() else path
        payload = read_weights_file(path)
        if isinstance(payload, dict) and payload.get("format") == FORMAT:
            verify_digest(payload, path)  # a damaged file is said to be one, not a malformed normaliser
            state = Checkpoint.from_dict(payload, path).artifact.normalizer
    if not isinstance(state, dict):
        return None
    try:
        return Normalizer.from_state(state), f"{path}'s own ({state['kind']})"
    except UserError as err:
        raise UserError(f"{option('--init ', 'finetune.init=')}{cfg.init}: {err}") from None
