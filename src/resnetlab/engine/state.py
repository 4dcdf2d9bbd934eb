"""What a run must remember across a restart, and the checkpoint dict that carries it.

`TrainState` is the loop's memory (step, schedule state, best validation error, running train
meters, elapsed time); `make_checkpoint` / `restore_checkpoint` turn it, with the model,
optimizer and GradScaler, into the checkpoint dict of checkpoint.py and back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from resnetlab.config import Config, config_to_dict
from resnetlab.errors import UserError, first_line

from .checkpoint import FORMAT, capture_rng, clean_state_dict, require_keys, restore_rng
from .schedules import ScheduleState


RESUME_KEYS = ("model", "model_name", "step", "optimizer", "schedule_state", "rng", "scaler", "metrics")


class Meter:
    """Running sums of loss, correct predictions and images, kept on the device (no sync per step)."""

    def __init__(self, device, sums=(0.0, 0.0, 0.0)):
        self.sums = torch.tensor(sums, dtype=torch.float64, device=device)  # [loss * n, correct, n]

    def update(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums += torch.stack([loss.detach().double() * n, correct.double(), torch.tensor(float(n), device=self.sums.device, dtype=torch.float64)])

    def reset(self) -> None:
        self.sums.zero_()

    def state(self) -> list[float]:
        return self.sums.tolist()


def meter_summary(sums: list[float]) -> tuple[float, float]:
    """(mean loss, error in percent) from [loss * n, correct, n] (NaN when empty)."""
    loss_sum, correct, n = sums
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, 100.0 * (1 - correct / n)


@dataclass
class TrainState:
    step: int = 0
    schedule: ScheduleState = field(default_factory=ScheduleState)
    best_val_err: float | None = None
    best_step: int | None = None  # the step best.pt holds (None in checkpoints older than this field)
    elapsed_s: float = 0.0
    window: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # meter since the last log point
    epoch_meter: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # meter since the last evaluation
    reached_target: dict | None = None  # train.stop_at_val_top1: {step, val_top1, elapsed_s} once reached


def is_finite_model(model: nn.Module) -> bool:
    """True when every parameter and buffer is finite (checked before a checkpoint is written)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def make_checkpoint(model, optimizer, scaler, state: TrainState, cfg: Config, classes, normalizer_state,
                    steps_per_epoch: int, metrics: dict) -> dict:
    inner = getattr(model, "module", model)
    return {
        "format": FORMAT,
        "model": clean_state_dict(model),
        "model_name": cfg.model.name,
        "model_kwargs": dict(cfg.model.kwargs),
        "num_classes": len(classes),
        "classes": list(classes),
        "normalizer": normalizer_state,
        "config": config_to_dict(cfg),
        "input_size": cfg.data.image_size,
        "eval_resize": cfg.data.eval_resize,
        "step": state.step,
        "epoch": state.step // steps_per_epoch,
        "optimizer": optimizer.state_dict(),
        "schedule_state": state.schedule.state_dict(),
        "rng": capture_rng(),
        "scaler": scaler.state_dict(),
        "metrics": {**metrics, "best_val_top1_err": state.best_val_err, "best_step": state.best_step,
                    "elapsed_s": state.elapsed_s,
                    "train_window": list(state.window), "train_epoch": list(state.epoch_meter),
                    "reached_target": state.reached_target,
                    "num_parameters": sum(p.numel() for p in inner.parameters())},
    }


def restore_checkpoint(ckpt: dict, model: nn.Module, optimizer, scaler, cfg: Config, path) -> TrainState:
    """Load the checkpoint at `path` into freshly built objects; returns the loop state to continue from."""
    require_keys(ckpt, RESUME_KEYS, path)
    if ckpt["model_name"] != cfg.model.name:
        raise UserError(f"{path} holds a {ckpt['model_name']} but the config asks for {cfg.model.name}; "
                        "resume with the run's own config (RUN_DIR/config.yaml)")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"])
        m = ckpt["metrics"]
        return TrainState(step=ckpt["step"], schedule=ScheduleState.from_state(ckpt["schedule_state"]),
                          best_val_err=m["best_val_top1_err"], best_step=m.get("best_step"), elapsed_s=m["elapsed_s"],
                          window=list(m["train_window"]), epoch_meter=list(m["train_epoch"]),
                          reached_target=m.get("reached_target"))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:  # a model, optimizer or RNG state of another shape
        raise UserError(f"{path} does not fit this run's {cfg.model.name} and optimizer ({first_line(err)}); resume with the "
                        "run's own config, or start a new run with --init to reuse only the weights") from None
