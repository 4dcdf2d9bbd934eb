"""Checkpoints: what they hold, written atomically, read without running pickled code.

Format "resnetlab-checkpoint-v1": a dict saved with `torch.save`, readable with
`torch.load(path, weights_only=True)` (only tensors, plain containers, str/int/float/bool/None):

    format        "resnetlab-checkpoint-v1"
    model         the model's state_dict (no "module."/"_orig_mod." prefixes)
    model_name    registry name, e.g. "resnet20"
    model_kwargs  extra builder kwargs (config model.kwargs), without num_classes
    num_classes   int
    classes       [str], class names in label order
    normalizer    the data Normalizer's state (rebuild with Normalizer.from_state)
    config        the fully resolved config as a nested dict (resnetlab.config.config_to_dict)
    input_size    training crop size (data.image_size)
    eval_resize   shorter side before the centre crop at evaluation (data.eval_resize)
    step, epoch   optimizer steps done; epoch = step // steps_per_epoch
    optimizer     optimizer state_dict (param groups carry their "lr_mult")
    schedule_state  ScheduleState as a dict (plateau / warm-up memory)
    rng           {"torch": ByteTensor, "cuda": [ByteTensor] , "numpy": {...}, "python": [...]}
    scaler        GradScaler state_dict ({} when fp16 is off)
    metrics       last evaluation's metrics dict, plus "best_val_top1_err" and "train_meter"

`load_checkpoint(path)` reads one (a RUN_DIR means RUN_DIR/checkpoints/best.pt, or last.pt if
there is no best); `model_from_checkpoint(...)` rebuilds (model, normalizer, classes, config).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import Config, config_from_dict
from resnetlab.errors import UserError
from resnetlab.files import atomic_write

FORMAT = "resnetlab-checkpoint-v1"


def save_checkpoint(ckpt: dict, path) -> None:
    """Write atomically (resnetlab.files.atomic_write): a crash or a full disk at any point leaves
    the previous checkpoint at `path` intact."""
    path = Path(path)
    try:
        with atomic_write(path) as f:
            torch.save(ckpt, f)
    except OSError as err:
        kept = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint existed"
        raise UserError(f"could not write checkpoint {path} ({err.strerror or err}); {kept}. "
                        "Free some disk space and resume with --resume") from err


def checkpoint_path(path_or_run_dir) -> Path:
    """A checkpoint file, or for a run directory its checkpoints/best.pt (else last.pt)."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path} is a folder without checkpoints/best.pt or checkpoints/last.pt; "
                        "pass a run directory written by `resnetlab train` or a .pt file")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path_or_run_dir) -> dict:
    path = checkpoint_path(path_or_run_dir)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, truncation, not a torch file: all mean "not a checkpoint"
        raise UserError(f"{path} is not a readable resnetlab checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} is not a {FORMAT} checkpoint (found {found!r}); plain weights files "
                        "go to --init or resnetlab.load_weights instead")
    return ckpt


def model_from_checkpoint(ckpt_or_path):
    """(model in eval mode on CPU, normalizer, classes, config) from a checkpoint or its path."""
    from resnetlab.data import Normalizer
    from resnetlab.models import create_model

    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else load_checkpoint(ckpt_or_path)
    model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    config: Config = config_from_dict(ckpt["config"])
    return model, Normalizer.from_state(ckpt["normalizer"]), list(ckpt["classes"]), config


def clean_state_dict(model: torch.nn.Module) -> dict:
    """The model's weights without the DDP / torch.compile wrappers' prefixes, on CPU."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def capture_rng() -> dict:
    """Every global RNG the run might draw from, in weights_only-loadable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))
