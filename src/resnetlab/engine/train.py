"""The training loop: `train_and_evaluate(config, workdir)`.

One loop for every device, precision and process count. The run directory receives config.yaml, classes.json,
metrics.jsonl (one object per evaluation), checkpoints/last.pt and checkpoints/best.pt (best by validation error,
never by test), and at the end summary.json with the per-class test results of best.pt, whose confusion matrix goes
to confusion_test.csv/.png."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnetlab.config import Config, checked_config
from resnetlab.data.loaders import epoch_image_size
from resnetlab.errors import UserError, count, expect_path, expect_type
from resnetlab.files import StorageError
from resnetlab.guest import guest_call

from .checkpoint import capture_rng, restore_rng, save_checkpoint
from .distributed import (agreed_signal, all_reduce_sum, dist_info_from_env, init_distributed, local_peers,
                          shutdown_distributed)
from .evaluate import evaluate_split
from .final_test import final_test
from .finetune import set_train_mode
from .heap import held_heap, huge_pages
from .loss import classification_loss
from .preflight import record_decoding_skips
from .run_records import MetricsRow, RunSummary
from .rundir import RunDirLock
from .runtime import Runtime, autocast, make_runtime, to_input
from .schedules import observe_train_error, observe_val_error, warmup_news
from .setup import Run, RunRequest, build_run, set_lr
from .signals import SIGNALS, StopOnSignal, TrainingInterrupted
from .state import (Meter, RunFinished, TrainingDiverged, is_finite_model, make_checkpoint, meter_summary, resuming,
                    storage_refusal)


@dataclass(frozen=True)
class StepParts:
    """What an SGD update uses besides the batch; made once, used for every step."""

    net: nn.Module  # what to call: the model, maybe wrapped in DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    normalizer: nn.Module
    rt: Runtime
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None  # data.balance=loss


def train_step(parts: StepParts, x: torch.Tensor, y: torch.Tensor):
    """One SGD update on a batch: x uint8 (B, 3, H, W), y int64 (B,) -> (loss, number correct)."""
    try:
        with autocast(parts.rt):
            logits = parts.net(to_input(parts.normalizer(x), parts.rt))
    except ValueError as err:  # PyTorch's BatchNorm, given a batch of one value per channel
        if "more than 1 value per channel" not in str(err):
            raise
        raise UserError(f"BatchNorm cannot train on a batch of {x.shape[0]} image(s) of {x.shape[-1]} px: a feature map "
                        "of the last stage holds one value per channel; raise optim.batch_size (per process) or "
                        "data.image_size") from None
    loss = classification_loss(logits.float(), y, parts.class_weights, parts.label_smoothing)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()  # the scaler is a no-op unless fp16
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()


@guest_call  # seeded from train.seed inside; the caller's torch, numpy and random generators are left as found
def train_and_evaluate(cfg: Config, workdir, *, resume: bool = False, stream=None,
                       resume_note: str | None = None, handle_signals: bool = True) -> RunSummary:
    """Train with `cfg`, writing into `workdir`; returns the run's summary (also summary.json).

    Under torchrun (RANK/WORLD_SIZE set) every process calls this; rank 0 writes the files.
    Raises TrainingInterrupted on SIGINT/SIGTERM/SIGHUP (after saving) and TrainingDiverged on NaN loss.
    handle_signals=False leaves the process's signal handlers alone (a service's own SIGHUP handler,
    one set from C): nothing is saved on a signal then, and Ctrl-C raises KeyboardInterrupt as usual.
    `resume_note`, a line on what a resume changes, is warned once the resumed run is accepted.
    finetune.linear_probe=true fits a classifier on frozen features instead (engine/linear_probe.py).
    """
    cfg = checked_config(cfg, "train_and_evaluate takes a Config (resnetlab.config.load_config(RECIPE, "
                         "[OVERRIDES]) makes one)")  # Config(model="resnet20") is refused here, not deep in the run
    workdir = expect_path(workdir, "workdir")
    for name, value in (("resume", resume), ("handle_signals", handle_signals)):  # "no" is truthy: it resumed
        expect_type(value, bool, f"{name} takes True or False")
    if cfg.finetune.linear_probe:
        from .linear_probe import train_linear_probe

        with StopOnSignal(handle_signals) as stop:  # a probe has no steps to finish: a signal stops it where it lands
            stop.at_once(0, None)  # (its --resume fits it again from the start, the same fit)
            return train_linear_probe(cfg, workdir, stream, resume=resume)
    dist_info = dist_info_from_env()
    rt = make_runtime(cfg.train, dist_info.local_rank)
    init_distributed(dist_info, rt.device)
    finished = False
    try:
        # Signals are caught before the lock and the data: a SIGTERM while data is built stops the run before step 1.
        with (StopOnSignal(handle_signals) as stop, RunDirLock(Path(workdir), dist_info) as lock,
              held_heap(cfg.train.hold_heap and rt.device.type == "cpu")):
            summary = _train(RunRequest(cfg, Path(workdir), resume, dist_info, rt, stream, resume_note), stop, lock)
        finished = True
        return summary
    except StorageError as err:
        raise storage_refusal(err, workdir) from err
    finally:
        shutdown_distributed(synchronize=finished)


def _train(request: RunRequest, stop: StopOnSignal, lock: RunDirLock) -> RunSummary:
    """The run itself; its model and DDP wrapper are gone when it returns (see shutdown_distributed)."""
    try:
        run = build_run(request, lock)
    except RunFinished as done:  # said, not raised: a scheduler's rerun of a finished run succeeds
        if request.dist_info.is_main:
            print(done, file=request.stream or sys.stderr, flush=True)
        return done.summary
    try:
        if signum := _agreed_signal(stop, run):  # a signal while the data was built
            raise TrainingInterrupted(signum, run.state.step, _last_checkpoint(run), local_peers(run.dist_info))
        best_state = train_loop(run, stop)
    finally:
        run.log.close()
    stop.at_once(run.state.step, _last_checkpoint(run))  # every step is saved: from here a signal stops the run where it lands
    summary = final_test(run, best_state)
    record_decoding_skips(run)
    if run.dist_info.is_main:
        summary.write(run.workdir)
    return summary


def train_loop(run: Run, stop: StopOnSignal):
    """Steps from run.state.step to run.total; returns the best-by-validation weights of this session."""
    state, cfg = run.state, run.cfg
    # The sums a checkpoint holds are over every process: restored on rank 0 alone, so that the next
    # all-reduce counts them once, whatever the number of processes before and now.
    kept = (lambda sums: sums) if run.dist_info.is_main else (lambda sums: (0.0, 0.0, 0.0))
    window, since_eval = Meter(run.rt.device, kept(state.window)), Meter(run.rt.device, kept(state.epoch_meter))
    clock = {"start": time.perf_counter() - state.elapsed_s, "eval": time.perf_counter(), "images": 0}
    best_state = None
    parts = StepParts(run.net, run.optimizer, run.scaler, run.normalizer, run.rt, cfg.optim.label_smoothing,
                      run.class_weights)
    if state.eval_pending is not None:  # saved as its validation failed: validated now, as it would have been
        lr, state.eval_pending = state.eval_pending, None
        best_state = eval_point(run, window, since_eval, lr, clock)
    set_train_mode(run.model, run.eval_bns)
    while state.step < run.total and state.reached_target is None:
        epoch, start_batch = divmod(state.step, run.steps_per_epoch)
        for index, (x, y) in enumerate(run.loader(epoch, start_batch)):
            lr = run.lr_fn(state.step, state.schedule)
            set_lr(run.optimizer, lr)
            loss, correct = train_step(parts, x, y)
            if index == 1:  # the held heap has grown to this epoch's steps: 2 MiB pages for it (engine/heap.py)
                huge_pages()
            window.update(loss, correct, len(y))
            since_eval.update(loss, correct, len(y))
            state.step += 1
            clock["images"] += len(y) * run.dist_info.world_size
            at_eval = state.step % run.eval_every == 0 or state.step == run.total
            if at_eval or state.step % cfg.train.log_every == 0:
                log_point(run, window, lr, clock)
            elif run.log.line_due(state.step):  # slow steps in a log file: rank 0's batches since the last log point
                run.log.progress_line(state.step, *meter_summary(window.state()), lr=lr, img_s=_rate(clock))
            if at_eval:
                best_state = eval_point(run, window, since_eval, lr, clock) or best_state
            if signum := _agreed_signal(stop, run):  # every process is here: the sums of all of them are saved
                state.window, state.epoch_meter = (all_reduce_sum(m.sums).tolist() for m in (window, since_eval))
                state.elapsed_s = time.perf_counter() - clock["start"]
                check_finite(run)
                path = save(run, MetricsRow(step=state.step, extra={"interrupted": True}), ("last.pt",))
                raise TrainingInterrupted(signum, state.step, path, local_peers(run.dist_info))  # (after the save)
            if state.step >= run.total or state.reached_target is not None:
                break
    return best_state


def log_point(run: Run, window: Meter, lr: float, clock: dict) -> None:
    """Every log_every steps: stop on NaN, feed the ResNet-110 warm-up, move the progress bar.

    The meter is summed over processes, so every process takes the same decisions.
    """
    loss, err = meter_summary(all_reduce_sum(window.sums).tolist())
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the training loss became {loss} in the {count(run.cfg.train.log_every, 'step')} up to step "
                               f"{run.state.step}; stopped, keeping the last good checkpoint {_last_good(run)}. "
                               f"Lower optim.lr (now {lr:g})", local_peers(run.dist_info))
    observe_train_error(run.cfg.schedule, run.state.schedule, run.state.step, err)
    step, every = run.state.step, (run.cfg.train.log_every, run.eval_every)  # the last point before: a log or an eval
    news = warmup_news(run.cfg.schedule, run.state.schedule, max((step - 1) // n * n for n in every), step, run.total, err)
    if news:
        run.log.info(news)
    run.log.progress(run.state.step, loss=loss, err=err, lr=lr, img_s=_rate(clock))
    window.reset()


def eval_point(run: Run, window: Meter, since_eval: Meter, lr: float, clock: dict):
    """Evaluate, record metrics, save last.pt (and best.pt); returns the weights if they are the best."""
    state = run.state
    check_finite(run)  # before the checkpoint, and before a validation of NaN weights could reach metrics.jsonl
    state.elapsed_s = time.perf_counter() - clock["start"]
    train_loss, train_err = meter_summary(all_reduce_sum(since_eval.sums).tolist())
    metrics = MetricsRow(epoch=state.step / run.steps_per_epoch, step=state.step, lr=lr, train_loss=train_loss,
                         train_err=train_err, images_per_s=_rate(clock), elapsed_s=state.elapsed_s)
    # Not validated unless the recent steps (the interval since the last evaluation, at most an epoch)
    # were all at full size (data.progressive_scales): the batch-norm statistics would be partly the
    # small crops', its error at full size would say little, and it must not become best.pt.
    recent = min(run.eval_every, run.steps_per_epoch)
    epochs = range(max(state.step - recent, 0) // run.steps_per_epoch, (state.step - 1) // run.steps_per_epoch + 1)
    small = any(epoch_image_size(run.cfg.data, e) != run.cfg.data.image_size for e in epochs)
    if run.bundle.val is not None and not small:  # the plain model: DDP's forward would sync buffers, and shards may be uneven
        val = validate(run, window, since_eval, lr)
        metrics.val_top1_err, metrics.val_top5_err = val["top1_err"], val["top5_err"]
        metrics.val_top1, metrics.val_top5 = val["top1"], val["top5"]
    # The plateau schedule watches validation error, or training error when there is no val split.
    if run.bundle.val is None or metrics.val_top1_err is not None:
        observe_val_error(run.cfg.schedule, state.schedule, train_err if run.bundle.val is None else metrics.val_top1_err,
                          state.step)
    target = run.cfg.train.stop_at_val_top1
    if target is not None and metrics.val_top1 is not None and metrics.val_top1 >= target:
        state.reached_target = {"step": state.step, "val_top1": metrics.val_top1, "elapsed_s": state.elapsed_s}
        run.log.info(f"validation top-1 {metrics.val_top1:.2f}% reached the target {target}% at step {state.step} "
                     f"({state.elapsed_s:.0f} s); stopping")
    is_best = metrics.val_top1_err is not None and (state.best_val_err is None or metrics.val_top1_err < state.best_val_err)
    if is_best:
        state.best_val_err = metrics.val_top1_err
        state.best_step = state.step
    since_eval.reset()
    state.window, state.epoch_meter = window.state(), since_eval.state()  # both just reset: zeros on every process
    # This order is what a restart after a kill relies on (rundir.tidy_for_start): the metrics line
    # first (dropped again if no checkpoint follows), then last.pt (which records the best step),
    # then best.pt (restored from last.pt if the kill came before it).
    run.log.record(metrics)
    save(run, metrics, ("last.pt", "best.pt") if is_best else ("last.pt",))
    set_train_mode(run.model, run.eval_bns)
    clock["eval"], clock["images"] = time.perf_counter(), 0
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()} if is_best else None


def validate(run: Run, window: Meter, since_eval: Meter, lr: float) -> dict:
    """The validation split's report. When it cannot be made (the decoding workers failed: a limit
    reached), the steps since the last checkpoint are saved first, with the RNGs as they were before it,
    so that --resume validates this step and goes on exactly as a run never stopped."""
    rng = capture_rng()  # the workers' seeds come from torch's RNG
    try:
        return evaluate_split(run.scored, run.bundle.val, run.cfg.data, run.eval_spec)
    except UserError as err:
        if isinstance(err, StorageError) or run.dist_info.enabled:  # (the other processes are in its collectives)
            raise
        state = run.state
        state.window, state.epoch_meter, state.eval_pending = window.state(), since_eval.state(), lr
        restore_rng(rng)
        path = save(run, MetricsRow(step=state.step, extra={"interrupted": True}), ("last.pt",))
        raise UserError(f"{err}. The validation at step {state.step} failed; every step is saved in {path}: once the "
                        f"cause is mended, {resuming(run.workdir)} validates it and goes on") from None


def check_finite(run: Run) -> None:
    """TrainingDiverged unless the weights are finite on every process: every one decides alike
    (BatchNorm's running statistics are each process's own; one that stopped alone left the others
    waiting for it in the next collective, a hang under torchrun)."""
    flags = torch.tensor([0.0 if is_finite_model(run.model) else 1.0], device=run.rt.device)
    if all_reduce_sum(flags).item() > 0:
        raise TrainingDiverged(f"the weights became NaN/inf by step {run.state.step}; kept the last good checkpoint "
                               f"{_last_good(run)}. Lower optim.lr", local_peers(run.dist_info))


def save(run: Run, metrics: MetricsRow, names: tuple[str, ...]) -> Path:
    """Write the checkpoint (rank 0) of weights check_finite has passed."""
    record_decoding_skips(run)  # every process is here
    if run.dist_info.is_main:
        ckpt = make_checkpoint(run.model, run.optimizer, run.scaler, run.state, run.cfg, run.bundle.classes,
                               run.normalizer.state(), run.steps_per_epoch, metrics)
        for name in names:
            save_checkpoint(ckpt, run.workdir / "checkpoints" / name)
    return run.workdir / "checkpoints" / "last.pt"


def _agreed_signal(stop: StopOnSignal, run: Run) -> int | None:
    """Every process must stop at the same step, so a signal seen by any one counts for all."""
    if not run.dist_info.enabled:
        return stop.signum
    return agreed_signal(stop.signum, SIGNALS, run.rt.device)


def _rate(clock: dict) -> float:
    return clock["images"] / max(time.perf_counter() - clock["eval"], 1e-9)


def _last_checkpoint(run: Run) -> Path | None:
    last = run.workdir / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def _last_good(run: Run) -> str:
    return str(_last_checkpoint(run) or "(none was written yet)")
