"""The training loop: `train_and_evaluate(config, workdir)`.

One loop for every device, precision and process count. The run directory receives
config.yaml, classes.json, metrics.jsonl (one object per evaluation), checkpoints/last.pt and
checkpoints/best.pt (best by validation error, never by test), and summary.json at the end.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.config import Config, save_config
from resnetlab.errors import UserError

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, dist_info_from_env, init_distributed, per_rank_batch, shutdown_distributed
from .evaluate import evaluate_split
from .finetune import set_train_mode
from .logger import RunLogger
from .runtime import Runtime, autocast, make_grad_scaler, make_runtime, prepare_model, to_input
from .schedules import create_learning_rate_fn, observe_train_error, observe_val_error, total_steps
from .signals import StopOnSignal, TrainingInterrupted
from .state import Meter, TrainState, build_model, build_optimizer, is_finite_model, make_checkpoint, meter_summary, restore_checkpoint, set_lr


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the last good checkpoint was kept."""


def train_step(model, optimizer, scaler, normalizer, x, y, rt: Runtime, label_smoothing: float):
    """One SGD update on a batch: x uint8 (B, 3, H, W), y int64 (B,) -> (loss, number correct)."""
    with autocast(rt):
        logits = model(to_input(normalizer(x), rt))
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()


def train_and_evaluate(cfg: Config, workdir, *, resume: bool = False, stream=None) -> dict:
    """Train with `cfg`, writing into `workdir`; returns the summary dict (also summary.json).

    Under torchrun (RANK/WORLD_SIZE set) every process calls this; rank 0 writes the files.
    Raises TrainingInterrupted on SIGINT/SIGTERM (after saving) and TrainingDiverged on NaN loss.
    """
    info = dist_info_from_env()
    rt = make_runtime(cfg.train, info.local_rank)
    init_distributed(info, rt.device)
    try:
        with StopOnSignal() as stop:
            return _train(cfg, Path(workdir), resume, info, rt, stop, stream)
    finally:
        shutdown_distributed()


def _prepare_workdir(workdir: Path, cfg: Config, classes, resume: bool, is_main: bool) -> None:
    last = workdir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise UserError(f"--resume {workdir}: no checkpoints/last.pt there to continue from")
    if not resume and last.exists():
        raise UserError(f"{workdir} already holds a run (checkpoints/last.pt); continue it with --resume {workdir} "
                        "or choose another --out")
    if is_main:
        (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, workdir / "config.yaml")
        (workdir / "classes.json").write_text(json.dumps(list(classes), indent=1))


def _wrap(model: nn.Module, cfg: Config, info: DistInfo, rt: Runtime) -> nn.Module:
    """DDP across processes, then optionally torch.compile; the caller keeps the plain model."""
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model


def _sync_bn(model: nn.Module, cfg: Config, info: DistInfo, rt: Runtime) -> nn.Module:
    if not (cfg.train.sync_bn and info.enabled):
        return model
    if rt.device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                        "turn it off for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _train(cfg: Config, workdir: Path, resume: bool, info: DistInfo, rt: Runtime, stop: StopOnSignal, stream) -> dict:
    from resnetlab.data import build_data, make_train_loader

    torch.manual_seed(cfg.train.seed)
    bundle = build_data(cfg.data, seed=cfg.train.seed)
    _prepare_workdir(workdir, cfg, bundle.classes, resume, info.is_main)
    batch = per_rank_batch(cfg.optim.batch_size, info)

    def loader(epoch: int, start_batch: int = 0):
        return make_train_loader(bundle.train, cfg.data, batch_size=batch, seed=cfg.train.seed, epoch=epoch,
                                 start_batch=start_batch, rank=info.rank, world_size=info.world_size,
                                 workers=cfg.train.workers, device=rt.device)

    steps_per_epoch = len(loader(0))
    if steps_per_epoch == 0:
        raise UserError(f"the training split has fewer images than one batch ({cfg.optim.batch_size}); lower --batch-size")
    total = total_steps(cfg.schedule, steps_per_epoch)
    lr_fn = create_learning_rate_fn(cfg.schedule, cfg.optim.lr, steps_per_epoch)
    eval_every = cfg.train.eval_every or steps_per_epoch

    say = print if info.is_main else (lambda *a: None)
    model, eval_bns = build_model(cfg, len(bundle.classes), info=say)
    model = prepare_model(_sync_bn(model, cfg, info, rt), rt)
    normalizer = bundle.normalizer.to(rt.device)
    optimizer, scaler = build_optimizer(model, cfg), make_grad_scaler(rt)
    state = TrainState()
    if resume:
        state = restore_checkpoint(load_checkpoint(workdir / "checkpoints" / "last.pt"), model, optimizer, scaler, cfg)
    net = _wrap(model, cfg, info, rt)

    log = RunLogger(workdir, info.is_main, total, state.step, cfg.train.tensorboard, stream)
    log.info(f"{cfg.model.name}: {total} steps ({steps_per_epoch}/epoch), global batch {cfg.optim.batch_size}"
             + (f" = {info.world_size} processes x {batch}" if info.enabled else "")
             + f", {rt.device} {rt.precision}{' channels_last' if rt.channels_last else ''}"
             + (f", resuming at step {state.step}" if state.step else ""))

    def checkpoint(metrics: dict, names: tuple[str, ...]) -> Path:
        last = workdir / "checkpoints" / "last.pt"
        if not is_finite_model(model):
            raise TrainingDiverged(f"the weights became NaN/inf by step {state.step}; kept the last good checkpoint "
                                   f"{last if last.exists() else '(none yet)'}. Lower optim.lr or use fp32/bf16")
        if info.is_main:
            ckpt = make_checkpoint(model, optimizer, scaler, state, cfg, bundle.classes, normalizer.state(),
                                   steps_per_epoch, metrics)
            for name in names:
                save_checkpoint(ckpt, workdir / "checkpoints" / name)
        return last

    window, epoch_meter = Meter(rt.device, state.window), Meter(rt.device, state.epoch_meter)
    session_start, images_since_eval, t_eval = time.perf_counter() - state.elapsed_s, 0, time.perf_counter()
    best_state = None
    set_train_mode(model, eval_bns)
    while state.step < total:
        epoch, start_batch = divmod(state.step, steps_per_epoch)
        for x, y in loader(epoch, start_batch):
            lr = lr_fn(state.step, state.schedule)
            set_lr(optimizer, lr)
            loss, correct = train_step(net, optimizer, scaler, normalizer, x, y, rt, cfg.optim.label_smoothing)
            window.update(loss, correct, len(y))
            epoch_meter.update(loss, correct, len(y))
            state.step += 1
            images_since_eval += len(y) * info.world_size
            at_log = state.step % cfg.train.log_every == 0
            at_eval = state.step % eval_every == 0 or state.step == total
            if at_log or at_eval:
                train_loss, train_err = meter_summary(all_reduce_sum(window.sums).tolist())
                if not math.isfinite(train_loss) and window.state()[2] > 0:
                    last = workdir / "checkpoints" / "last.pt"
                    raise TrainingDiverged(f"the training loss became {train_loss} between steps {state.step - cfg.train.log_every} "
                                           f"and {state.step}; stopped, keeping the last good checkpoint "
                                           f"{last if last.exists() else '(none yet)'}. Lower optim.lr (now {lr:g})")
                observe_train_error(cfg.schedule, state.schedule, state.step, train_err)
                log.progress(state.step, loss=train_loss, err=train_err, lr=lr,
                             img_s=images_since_eval / max(time.perf_counter() - t_eval, 1e-9))
                window.reset()
            if at_eval:
                state.elapsed_s = time.perf_counter() - session_start
                metrics = _evaluation(net, normalizer, bundle, cfg, rt, info, state, epoch_meter, lr,
                                      images_since_eval / max(time.perf_counter() - t_eval, 1e-9), steps_per_epoch)
                is_best = metrics.get("val_top1_err") is not None and (state.best_val_err is None or metrics["val_top1_err"] < state.best_val_err)
                if is_best:
                    state.best_val_err = metrics["val_top1_err"]
                state.window, state.epoch_meter = window.state(), [0.0, 0.0, 0.0]
                epoch_meter.reset()
                checkpoint(metrics, ("last.pt", "best.pt") if is_best else ("last.pt",))
                if is_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                log.record(metrics)
                set_train_mode(model, eval_bns)
                images_since_eval, t_eval = 0, time.perf_counter()
            if _stop_requested(stop, info, rt):
                state.window, state.epoch_meter, state.elapsed_s = window.state(), epoch_meter.state(), time.perf_counter() - session_start
                path = checkpoint({"step": state.step, "interrupted": True}, ("last.pt",))
                log.close()
                raise TrainingInterrupted(stop.signum or 15, state.step, path)
            if state.step >= total:
                break
    log.close()
    summary = _final_test(model, net, best_state, normalizer, bundle, cfg, rt, info, state, workdir)
    if info.is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _stop_requested(stop: StopOnSignal, info: DistInfo, rt: Runtime) -> bool:
    """Every process must stop at the same step, so a signal seen by any one counts for all."""
    if not info.enabled:
        return stop.requested
    return bool(all_reduce_sum(torch.tensor([float(stop.requested)], device=rt.device)).item())


def _evaluation(net, normalizer, bundle, cfg, rt, info, state: TrainState, epoch_meter: Meter, lr: float,
                images_per_s: float, steps_per_epoch: int) -> dict:
    train_loss, train_err = meter_summary(all_reduce_sum(epoch_meter.sums).tolist())
    metrics = {"epoch": state.step / steps_per_epoch, "step": state.step, "lr": lr, "train_loss": train_loss,
               "train_err": train_err, "val_top1_err": None, "val_top5_err": None,
               "images_per_s": images_per_s, "elapsed_s": state.elapsed_s}
    if bundle.val is not None:
        val = evaluate_split(net, normalizer, bundle.val, cfg, rt, info, workers=cfg.train.workers)
        metrics.update(val_top1_err=val["top1_err"], val_top5_err=val["top5_err"], val_top1=val["top1"], val_top5=val["top5"])
    observe_val_error(cfg.schedule, state.schedule, metrics["val_top1_err"] if bundle.val is not None else train_err)
    return metrics


def _final_test(model, net, best_state, normalizer, bundle, cfg, rt, info, state: TrainState, workdir: Path) -> dict:
    """Test error of the last weights and of the best-by-validation weights (when both exist)."""
    summary = {"steps": state.step, "best_val_top1_err": state.best_val_err, "elapsed_s": state.elapsed_s,
               "checkpoints": {"last": str(workdir / "checkpoints" / "last.pt")}, "test": {}}
    best_path = workdir / "checkpoints" / "best.pt"
    if best_path.exists() or best_state is not None:
        summary["checkpoints"]["best"] = str(best_path)
    if bundle.test is None:
        return summary
    summary["test"]["last"] = evaluate_split(net, normalizer, bundle.test, cfg, rt, info, workers=cfg.train.workers)
    if best_state is None and best_path.exists():
        best_state = load_checkpoint(best_path)["model"]
    if best_state is not None:
        model.load_state_dict(best_state)
        summary["test"]["best"] = evaluate_split(net, normalizer, bundle.test, cfg, rt, info, workers=cfg.train.workers)
    return summary
