"""What a run must remember across a restart: the loop's meters, and the checkpoint record that
carries the loop state with the model, optimizer, GradScaler and RNGs.

`make_checkpoint` builds the `Checkpoint` record (engine/records.py) of a training run;
`restore_checkpoint` loads one into freshly built objects and returns the `LoopState` to continue from;
`check_steps_left` then says whether the resumed run has anything left to do; `storage_refusal`
says how to go on after a write the storage refused.
"""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import torch
from torch import nn

from resnetlab.config import Config, config_to_dict
from resnetlab.errors import UserError, count, first_line, option
from resnetlab.files import StorageError

from .checkpoint import capture_rng, clean_state_dict, restore_rng
from .records import Artifact, Checkpoint, LoopState, TrainingState, check_loop
from .run_records import MetricsRow, RunSummary


class RunFinished(Exception):
    """A resumed run with nothing left to do: every step trained and summary.json written. Not an
    error: a job scheduler rerunning the command of a finished run (--resume-if-exists) must
    succeed, and must not test it again or rewrite its files. Carries the run's summary."""

    def __init__(self, message: str, summary: RunSummary):
        super().__init__(message)
        self.summary = summary


class TrainingDiverged(UserError):
    """The loss or the weights became NaN/inf; the last good checkpoint was kept. Under torchrun every
    process raises it at the same step (the decision is summed over them); `peers` are the job's other
    processes on this machine, which rank 0 waits for before it fails (cli/train.py, as for a stop)."""

    def __init__(self, message: str, peers: tuple[int, ...] = ()):
        super().__init__(message)
        self.peers = peers


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


def is_finite_model(model: nn.Module) -> bool:
    """True when every parameter and buffer is finite (checked before a checkpoint is written)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def make_artifact(model, cfg: Config, classes, normalizer_state) -> Artifact:
    """The trained model as written to disk: weights, how to rebuild the net and how to feed it."""
    return Artifact(weights=clean_state_dict(model), model_name=cfg.model.name, model_kwargs=dict(cfg.model.kwargs),
                    num_classes=len(classes), classes=list(classes), normalizer=normalizer_state,
                    config=config_to_dict(cfg), input_size=cfg.data.image_size, eval_resize=cfg.data.eval_resize)


def make_checkpoint(model, optimizer, scaler, state: LoopState, cfg: Config, classes, normalizer_state,
                    steps_per_epoch: int, metrics: MetricsRow) -> Checkpoint:
    inner = getattr(model, "module", model)
    training = TrainingState(loop=state, epoch=state.step // steps_per_epoch, optimizer=optimizer.state_dict(),
                             scaler=scaler.state_dict(), rng=capture_rng(), last_metrics=metrics,
                             num_parameters=sum(p.numel() for p in inner.parameters()))
    return Checkpoint(make_artifact(model, cfg, classes, normalizer_state), training)


def restore_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer, scaler, cfg: Config, path) -> LoopState:
    """Load the checkpoint read from `path` into freshly built objects; returns the loop state to continue from."""
    name, training = ckpt.artifact.model_name, ckpt.training
    if training is None:
        raise UserError(f"{path} holds a model but no training state (a linear probe's or converted weights); "
                        f"start a new run with {option('--init ', 'finetune.init=')}{path} to train from its weights")
    if name != cfg.model.name:
        raise UserError(f"{path} holds a {name} but the config asks for {cfg.model.name}; "
                        "resume with the run's own config (RUN_DIR/config.yaml)")
    check_loop(training.loop, path)
    try:
        model.load_state_dict(ckpt.artifact.weights)
        optimizer.load_state_dict(training.optimizer)
        if training.scaler:
            scaler.load_state_dict(training.scaler)
        restore_rng(training.rng)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:  # a state of another shape
        raise UserError(f"{path} does not fit this run's {cfg.model.name} and optimizer ({first_line(err)}); resume with the "
                        f"run's own config, or start a new run with {option('--init', 'finetune.init')} to reuse only "
                        "the weights") from None
    return training.loop


def check_steps_left(state: LoopState, total: int, cfg: Config, workdir) -> None:
    """Before anything is written: a run is never shortened below the step it reached (its
    checkpoints, metrics and summary are of the longer run), and a finished one raises RunFinished.
    A run with no step left but no summary of that step (killed during its final test) is not
    finished: the final test runs again."""
    if state.step > total:
        epochs = cfg.schedule.epochs
        asked = (option(f"--max-steps {total}", f"schedule.max_steps={total}") if epochs is None
                 else f"the {count(total, 'step')} of {option(f'--epochs {epochs}', f'schedule.epochs={epochs}')}")
        raise UserError(f"{workdir} is already at step {state.step}, past {asked}; a run cannot be shortened "
                        f"({option('pass --max-steps', 'set schedule.max_steps')} above {state.step} to train further)")
    if state.step < total and state.reached_target is None:
        return
    summary = _summary_of(workdir)
    if summary is None or summary.steps != state.step:
        return
    how = ("it reached train.stop_at_val_top1" if state.reached_target is not None
           else option("pass a larger --max-steps", "set a larger schedule.max_steps") + " to train further")
    raise RunFinished(f"{workdir} finished at step {state.step}: nothing to resume ({how})", summary)


def _summary_of(workdir) -> RunSummary | None:
    try:
        return RunSummary.read(workdir)
    except UserError:  # damaged: the final test writes it again
        return None


def resuming(run) -> str:
    """A resume of `run` asked for, in the caller's words (errors.option): the option or the argument."""
    return option(f"--resume {run}", f"resume=True in {run}")


def new_run_from(run) -> str:
    """How to start a new run from `run`'s weights instead, in the caller's words."""
    return option(f"--init {run} --out NEW_RUN", f"finetune.init={run}, in another workdir")


def storage_refusal(err: StorageError, workdir) -> StorageError:
    """A refused write, with what to do about it by its cause (the OSError under the StorageError,
    else its reason): a full disk wants space, a read-only or forbidden folder wants write access;
    then how to go on (--resume once a checkpoint exists)."""
    cause, code = err, None
    for _ in range(8):  # the chain of causes, never a loop
        if cause is None or (isinstance(cause, OSError) and cause.errno):
            code = getattr(cause, "errno", None)
            break
        cause = cause.__cause__ or cause.__context__
    full, denied = (errno.ENOSPC, errno.EDQUOT), (errno.EROFS, errno.EACCES, errno.EPERM)
    code = code or next((c for c in full + denied if os.strerror(c) == getattr(err, "reason", None)), None)
    again = ("continue with " + option(f"--resume {workdir}", "resume=True")
             if (Path(workdir) / "checkpoints" / "last.pt").is_file() else "start the run again")
    advice = (f"Free some space, then {again}" if code in full else
              f"{workdir} is not writable (read-only or no permission): make it writable, then {again}"
              if code in denied else f"Once it can be written, {again}")
    return StorageError(f"{err}. {advice}")
