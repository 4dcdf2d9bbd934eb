"""Learning-rate schedules: pure functions of (step, state).

`create_learning_rate_fn(cfg, base_lr, steps_per_epoch)` returns `lr_fn(step, state) -> lr`
for the update numbered `step` (0-based). Two schedules need to remember something the step
alone does not tell: the plateau schedule (how often it has decayed) and the paper's ResNet-110
warm-up (whether training error has gone below the threshold yet). That memory is the explicit
`ScheduleState`, updated by `observe_train_error` / `observe_val_error` and saved in every
checkpoint, so a resumed run follows the same lr curve.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

from resnetlab.config import ScheduleConfig
from resnetlab.errors import UserError, count, option

KINDS = ("step", "cosine", "onecycle", "plateau", "constant")


@dataclass
class ScheduleState:
    warmup_done_step: int | None = None  # ResNet-110 warm-up: step at which train error fell below the bar
    best_val_err: float | None = None  # plateau: best validation error so far (percent)
    bad_evals: int = 0  # plateau: evaluations since the best one
    num_decays: int = 0  # plateau: how many times lr was multiplied by gamma

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "ScheduleState":
        return cls(**state)


def total_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    """Number of optimizer steps in the run: epochs * steps_per_epoch if epochs is set, else max_steps."""
    steps = cfg.epochs * steps_per_epoch if cfg.epochs is not None else cfg.max_steps
    if steps <= 0:
        raise UserError(f"schedule: the run has {count(steps, 'step')}; set schedule.epochs or schedule.max_steps > 0")
    return steps


def milestone_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> list[int]:
    if cfg.milestones_unit not in ("steps", "epochs"):
        raise UserError(f"schedule.milestones_unit must be steps or epochs, got {cfg.milestones_unit!r}")
    scale = steps_per_epoch if cfg.milestones_unit == "epochs" else 1
    return sorted(int(m * scale) for m in cfg.milestones)


def _decay_fn(cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int) -> Callable[[int, ScheduleState], float]:
    """The schedule after warm-up, as a function of (step, state)."""
    total = total_steps(cfg, steps_per_epoch)
    start, end_lr = cfg.warmup_steps, base_lr * cfg.final_lr_frac
    span = max(total - start, 1)
    if cfg.kind == "step":
        marks = milestone_steps(cfg, steps_per_epoch)
        return lambda step, state: base_lr * cfg.gamma ** sum(step >= m for m in marks)
    if cfg.kind == "cosine":
        return lambda step, state: end_lr + (base_lr - end_lr) * 0.5 * (1 + math.cos(math.pi * min((step - start) / span, 1.0)))
    if cfg.kind == "onecycle":  # linear down from the peak (the warm-up is the way up)
        return lambda step, state: base_lr + (end_lr - base_lr) * min((step - start) / span, 1.0)
    if cfg.kind == "plateau":
        return lambda step, state: base_lr * cfg.gamma ** state.num_decays
    if cfg.kind == "constant":
        return lambda step, state: base_lr
    raise UserError(f"unknown schedule.kind {cfg.kind!r}; choose one of {', '.join(KINDS)}")


def create_learning_rate_fn(cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int) -> Callable[[int, ScheduleState], float]:
    """lr_fn(step, state) -> learning rate for update `step`.

    Warm-up comes first: with warmup_until_err set (paper, ResNet-110) lr stays at warmup_lr
    until the state records that training error fell below the bar; otherwise lr rises
    linearly from warmup_lr to base_lr over warmup_steps.
    """
    decay = _decay_fn(cfg, base_lr, steps_per_epoch)
    warmup = cfg.warmup_steps

    def lr_fn(step: int, state: ScheduleState) -> float:
        if cfg.warmup_until_err is not None and state.warmup_done_step is None:
            return cfg.warmup_lr
        if step < warmup:
            return cfg.warmup_lr + (base_lr - cfg.warmup_lr) * step / warmup
        return decay(step, state)

    return lr_fn


def observe_train_error(cfg: ScheduleConfig, state: ScheduleState, step: int, train_err: float) -> ScheduleState:
    """Record a training error (percent) measured up to `step`; ends the ResNet-110 warm-up."""
    if cfg.warmup_until_err is not None and state.warmup_done_step is None and train_err < cfg.warmup_until_err:
        state.warmup_done_step = step
    return state


def warmup_news(cfg: ScheduleConfig, state: ScheduleState, since: int, step: int, total: int, err: float) -> str | None:
    """A line for the log about the error-gated warm-up in the steps (since, step]: that it ended, or, once, that it
    still holds the lr at a tenth of the run (the paper's ResNet-110 left it after about 400 of 64k steps; a net
    that never gets under the bar, a plain-110 say, would train at warmup_lr to the end without a word)."""
    bar = cfg.warmup_until_err
    if bar is None:
        return None
    if state.warmup_done_step == step:
        return f"warm-up ended at step {step}: training error {err:.1f}% < {bar:g}%, so lr leaves {cfg.warmup_lr:g}"
    if state.warmup_done_step is None and since < total // 10 <= step:
        return (f"the warm-up still holds lr at {cfg.warmup_lr:g} after {step} of {total} steps: training error "
                f"{err:.1f}% is not under schedule.warmup_until_err={bar:g}% (the paper's ResNet-110 got there in about "
                "400), and it stays until it is; to train on at optim.lr, stop and resume with "
                f"{option('--set ', 'the override ')}schedule.warmup_until_err=null")
    return None


def observe_val_error(cfg: ScheduleConfig, state: ScheduleState, val_err: float, step: int) -> ScheduleState:
    """Record a validation error (percent) measured after `step` updates; the plateau schedule decays
    after `patience` bad evaluations. Not during a warm-up: the warm-up's own lr ignores the decays,
    and those counted there dropped the lr 100x the moment it ended (it never trained at optim.lr)."""
    warming_up = (cfg.warmup_until_err is not None and state.warmup_done_step is None) or step < cfg.warmup_steps
    if cfg.kind != "plateau" or warming_up:
        return state
    if state.best_val_err is None or val_err < state.best_val_err:
        state.best_val_err, state.bad_evals = val_err, 0
        return state
    state.bad_evals += 1
    if state.bad_evals >= cfg.patience:
        state.num_decays += 1
        state.bad_evals = 0
    return state


def schedule_warnings(cfg: ScheduleConfig, steps_per_epoch: int) -> list[str]:
    """What in a schedule cannot happen within the run: a warm-up as long as the run (the lr never
    reaches its peak) or lr milestones at or after the last step (never taken)."""
    total = total_steps(cfg, steps_per_epoch)
    length = f"the run has {count(total, 'step')} ({steps_per_epoch} per epoch)"
    out = []
    if cfg.warmup_steps >= total and cfg.warmup_until_err is None:
        out.append(f"schedule.warmup_steps={cfg.warmup_steps} is not shorter than the run: {length}, so the lr never "
                   f"reaches optim.lr; lower schedule.warmup_steps (e.g. {total // 10})")
    late = [m for m in milestone_steps(cfg, steps_per_epoch) if m >= total] if cfg.kind == "step" else []
    if late:
        out.append(f"schedule.milestones {cfg.milestones} ({cfg.milestones_unit}): {len(late)} of them at or after the "
                   f"last step, so the lr is never lowered there; {length}")
    return out

