"""Everything a run builds before its loop: data, model, optimizer, schedule, run directory.

`build_run` returns one `Run` holding those objects, so the loop's helpers take one argument
instead of a dozen. Under torchrun every process builds the same things from the same seed.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from resnetlab.config import Config, save_config
from resnetlab.errors import ResnetlabWarning, UserError, count
from resnetlab.files import storage_errors, write_text_atomic
from resnetlab.models import create_model, model_info

from .checkpoint import load_checkpoint, seed_rngs
from .distributed import DistInfo, dist_info_from_env, per_rank_batch
from .evaluate import EvalModel, run_eval_spec
from .finetune import apply_freezing, load_init_weights, param_groups
from .init_normalizer import init_normalizer
from .logger import RunLogger
from .preflight import check_resumed_data, preflight
from .records import LoopState
from .rundir import RunDirLock, refuse_out_in_data, resume_point, tidy_for_start
from .resume_changes import runtime_change
from .runtime import Runtime, compile_model, describe_runtime, make_grad_scaler, prepare_model, runtime_record
from .schedules import create_learning_rate_fn, total_steps
from .state import check_steps_left, restore_checkpoint


@dataclass(frozen=True)
class RunRequest:
    """What train_and_evaluate was asked for, resolved for this process."""

    cfg: Config
    workdir: Path
    resume: bool
    dist_info: DistInfo
    rt: Runtime
    stream: object = None  # where the progress lines go (None: the terminal)
    resume_note: str | None = None  # what a --resume changes (the schedule): warned once the run is accepted


@dataclass
class Run:
    cfg: Config
    workdir: Path
    dist_info: DistInfo
    rt: Runtime
    bundle: object  # resnetlab.data.DataBundle
    model: nn.Module  # the plain model (checkpoints, evaluation of best weights)
    net: nn.Module  # what the loop calls: the model, wrapped in DDP and/or torch.compile
    eval_bns: list  # frozen BatchNorms, kept in eval mode while training
    normalizer: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: LoopState
    batch: int  # per-process batch
    steps_per_epoch: int
    total: int
    lr_fn: Callable
    log: RunLogger
    class_weights: torch.Tensor | None = None  # data.balance=loss: cross-entropy weight per class
    recorded_skips: int = 0  # files met unreadable while decoding that RUN/data.json lists (preflight)

    def loader(self, epoch: int, start_batch: int = 0):
        return train_loader(self.bundle, self.cfg, self.dist_info, self.rt, epoch, start_batch)

    @property
    def scored(self) -> EvalModel:
        """The plain model for evaluation: DDP's forward would sync buffers, and shards may be uneven."""
        return EvalModel(self.model, self.normalizer, self.rt)

    @property
    def eval_spec(self):
        return run_eval_spec(self.cfg, self.dist_info, self.rt, self.cfg.train.workers)

    @property
    def eval_every(self) -> int:
        return self.cfg.train.eval_every or self.steps_per_epoch


def train_loader(bundle, cfg: Config, dist_info: DistInfo, rt: Runtime, epoch: int, start_batch: int = 0):
    """This process's share of the batches of `epoch`, from batch `start_batch` on (resume)."""
    from resnetlab.data import LoaderSpec, make_train_loader

    spec = LoaderSpec(per_rank_batch(cfg.optim.batch_size, dist_info), dist_info.rank, dist_info.world_size,
                      cfg.train.workers, rt.device)
    return make_train_loader(bundle.train, cfg.data, spec, seed=cfg.train.seed, epoch=epoch, start_batch=start_batch)


def build_model(cfg: Config, classes: list[str], say=print, resuming: bool = False) -> tuple[nn.Module, list[nn.Module]]:
    """The model with fine-tuning applied: (model on CPU, BatchNorms to keep in eval mode). A resumed
    run does not read finetune.init: its checkpoint holds every weight, and the init may be gone
    (moved, deleted, a published name not cached on an offline machine)."""
    model = create_model(cfg.model.name, num_classes=len(classes), **cfg.model.kwargs)
    if cfg.finetune.init and not resuming:
        skipped, head = load_init_weights(model, cfg.finetune.init, cfg.model.name, classes)
        say(f"initialised from {cfg.finetune.init}" + (f"; {head}" if head else "") + (f"; new classifier for {count(len(classes), 'class')} ({', '.join(skipped)} re-initialised)" if skipped else ""))
    return model, apply_freezing(model, cfg.finetune)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum, as in the paper (weight decay on every parameter, as the paper did)."""
    o = cfg.optim
    if o.nesterov and o.momentum <= 0:
        raise UserError("optim.nesterov needs optim.momentum > 0")
    if o.lr < 0 or o.weight_decay < 0 or o.momentum < 0:
        raise UserError(f"optim.lr, momentum and weight_decay must be >= 0 (got {o.lr}, {o.momentum}, {o.weight_decay})")
    return make_sgd(param_groups(model, cfg.finetune.backbone_lr_mult), lr=o.lr, momentum=o.momentum,
                    weight_decay=o.weight_decay, nesterov=o.nesterov)


def make_sgd(params, **settings) -> torch.optim.SGD:
    """torch.optim.SGD, fused (one kernel for all parameters) where they allow it (floating point, CPU or CUDA):
    the same update to rounding in a third of the time (2-core Ice Lake Xeon; under 0.5% of a training step)."""
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.SGD(params, fused=fused or None, **settings)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


def check_stop_target(target: float | None, bundle) -> None:
    """train.stop_at_val_top1 is a top-1 accuracy, and it is watched on the validation split."""
    if target is None:
        return
    if not 0 < target <= 100:
        raise UserError(f"train.stop_at_val_top1={target} must be a top-1 accuracy in (0, 100]")
    if bundle.val is None:
        raise UserError(f"train.stop_at_val_top1={target} needs a validation split; set data.val_size > 0")


def check_config(cfg: Config) -> None:
    """The values refused only once something is built from them (the model name, the schedule),
    checked from the config alone by the very functions that build them: for --print-config,
    which builds nothing, and for a run before it spends minutes on its data."""
    name, dot, tag = cfg.model.name.partition(".")  # "resnet50.TAG" names published weights of resnet50
    model_info(name)
    if dot:  # an unknown tag is said now, not when the weights are fetched
        from resnetlab.models.pretrained import list_weights, weights_for

        if not tag.strip():
            tags = ", ".join(f"{name}.{w.name.partition('.')[2]}" for w in list_weights(name)) or "none published"
            raise UserError(f"model.name {cfg.model.name!r}: nothing after the dot; name the model alone, or its "
                            f"published weights ({tags})")
        weights_for(name, tag)
    if "num_classes" in cfg.model.kwargs:  # the builder is given the data's count: a TypeError traceback, twice given
        raise UserError("model.kwargs.num_classes: the number of classes comes from the data; drop it")
    with torch.device("meta"):  # shapes only: refuses unknown or wrong model.kwargs without building weights
        create_model(name, **cfg.model.kwargs)
    create_learning_rate_fn(cfg.schedule, cfg.optim.lr, steps_per_epoch=1)
    check_choices(cfg)


def check_choices(cfg: Config) -> None:
    """Words the config names something by, checked before anything is built (each was refused only
    when used: a typo in data.augment after the data was decoded; data.interpolation=nearest by
    predict, after training, when it first resized an image)."""
    from resnetlab.config.geometry import check_geometry
    from resnetlab.data.build import DATASETS
    from resnetlab.data.decode import resample_filter
    from resnetlab.data.loaders import AUGMENTS
    from resnetlab.data.normalize import KINDS

    from .runtime import COMPILE_MODES, DEVICE_FORMS, DEVICE_PATTERN, DTYPES, SWITCH

    data, train = cfg.data, cfg.train
    for key, value, allowed in (("data.dataset", data.dataset, DATASETS), ("data.augment", data.augment, AUGMENTS),
                                ("data.normalize", data.normalize, KINDS),
                                ("train.precision", train.precision, ("auto", *DTYPES)),
                                ("train.channels_last", train.channels_last, SWITCH),
                                ("train.fused_bn", train.fused_bn, SWITCH),
                                ("train.compile", train.compile, (*SWITCH, *COMPILE_MODES))):
        if value not in allowed:
            raise UserError(f"unknown {key} {value!r}; choose one of {', '.join(dict.fromkeys(allowed))}")
    resample_filter(data.interpolation)
    check_geometry(data, dist_info_from_env().is_main)  # a crop larger than the resized image, or little of it
    if not DEVICE_PATTERN.fullmatch(str(train.device).strip().lower()):
        raise UserError(f"unknown train.device {train.device!r}; use {DEVICE_FORMS}")


def write_workdir(workdir: Path, cfg: Config, bundle, is_main: bool, lock: RunDirLock) -> None:
    """Lock the run directory (making it for a new run) and write the run's description into it.
    Called once everything that can refuse the config has accepted it, so a refused command leaves
    no directory behind and a refused --resume leaves the run's config.yaml as it was (config.yaml
    is what every later --resume starts from). Every process calls it, rank 0 writes."""
    lock.acquire()
    lock.keep()
    if is_main:
        with storage_errors(workdir / "checkpoints"):
            (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, workdir / "config.yaml")
        write_text_atomic(workdir / "classes.json", json.dumps(list(bundle.classes), indent=1))


def _per_process(model: nn.Module, eval_bns: list, cfg: Config) -> list[str]:
    """What each process computes over its own share of the global batch, so that N processes do not
    train as one: BatchNorm that trains without sync_bn; a loss whose mean is weighted (each process
    normalises its own, DDP then averages the processes); a batch that lost unreadable files."""
    live_bn = not cfg.train.sync_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in eval_bns
                                            for m in model.modules())
    weighted = cfg.data.balance == "loss"
    return ((["BatchNorm statistics are per process"] if live_bn else [])
            + (["the class-weighted loss (data.balance=loss) is averaged per process"] if weighted else [])
            + (["a batch that lost unreadable files (data.skip_bad) weighs its images per process"]
               if cfg.data.skip_bad else []))


def _sync_bn(model: nn.Module, cfg: Config, dist_info: DistInfo, rt: Runtime) -> nn.Module:
    if not (cfg.train.sync_bn and dist_info.enabled):
        return model
    if rt.device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                        "turn it off for CPU runs")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _wrap(model: nn.Module, cfg: Config, dist_info: DistInfo, rt: Runtime) -> nn.Module:
    """DDP across processes, then optionally torch.compile; the caller keeps the plain model."""
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return compile_model(model, rt.compile)


def build_run(request: RunRequest, lock: RunDirLock) -> Run:
    from resnetlab.data import build_data
    from resnetlab.data.normalize import Normalizer
    from resnetlab.data.summary import loss_weights

    cfg, workdir, resume, dist_info, rt = request.cfg, request.workdir, request.resume, request.dist_info, request.rt
    check_config(cfg)
    if not resume:  # an --out the run cannot use is refused before minutes of data
        refuse_out_in_data(workdir, cfg.data.root, cfg.data.dataset)
    start_from = resume_point(workdir, resume)
    seed_rngs(cfg.train.seed)
    ckpt = load_checkpoint(start_from) if start_from is not None else None
    # a resumed run goes on with the normaliser it trained with; a new one from weights normalises as they were trained
    init_norm = None if ckpt else init_normalizer(cfg.finetune)
    bundle = build_data(cfg.data, seed=cfg.train.seed,
                        normalizer=Normalizer.from_state(ckpt.artifact.normalizer) if ckpt else init_norm and init_norm[0])
    check_stop_target(cfg.train.stop_at_val_top1, bundle)
    if start_from is not None:  # a resumed run's data must be the data it trained on
        check_resumed_data(workdir, bundle)
    # messages go to stderr with the log: stdout holds only the summary JSON
    say = (lambda *a: print(*a, file=request.stream or sys.stderr, flush=True)) if dist_info.is_main else (lambda *a: None)
    model, eval_bns = build_model(cfg, bundle.classes, say=say, resuming=start_from is not None)
    if init_norm:  # once the init is accepted
        say(f"normalisation: {init_norm[1]}, as the init weights learnt (finetune.init_normalizer=false: data.normalize)")
    model = prepare_model(_sync_bn(model, cfg, dist_info, rt), rt)
    optimizer, scaler = build_optimizer(model, cfg), make_grad_scaler(rt)
    state = LoopState()
    if ckpt is not None:
        state = restore_checkpoint(ckpt, model, optimizer, scaler, cfg, start_from)
    trained_by, trained_with = state.processes, state.runtime  # what trained it so far; from here, this session
    state.processes, state.runtime = dist_info.world_size, runtime_record(rt)
    steps_per_epoch = len(train_loader(bundle, cfg, dist_info, rt, 0))
    total = total_steps(cfg.schedule, steps_per_epoch)
    lr_fn = create_learning_rate_fn(cfg.schedule, cfg.optim.lr, steps_per_epoch)
    check_steps_left(state, total, cfg, workdir)
    net = _wrap(model, cfg, dist_info, rt)
    # Nothing above wrote to the run directory (or made it): everything that can refuse the config has accepted it.
    write_workdir(workdir, cfg, bundle, dist_info.is_main, lock)
    for note in (request.resume_note, ckpt and runtime_change(trained_with, state.runtime, ckpt.artifact.config, cfg)):
        if note and dist_info.is_main:  # after every refusal: a refused --resume says only why
            warnings.warn(note, ResnetlabWarning, stacklevel=2)
    # Batches and augmentation do not depend on the number of processes; what is computed per process does.
    changed = trained_by not in (None, dist_info.world_size) and dist_info.is_main
    if changed and (differs := _per_process(model, eval_bns, cfg)):
        warnings.warn(f"{workdir} was trained by {count(trained_by, 'process')} and goes on with "
                      f"{dist_info.world_size}: the same images in the same global batches, but {' and '.join(differs)}"
                      f", so it continues as neither an unbroken run of {trained_by} nor one of {dist_info.world_size} "
                      "would", ResnetlabWarning, stacklevel=2)
    repairs = tidy_for_start(workdir, state.step, ckpt) if dist_info.is_main else []
    run = Run(cfg, workdir, dist_info, rt, bundle, model, net, eval_bns, bundle.normalizer.to(rt.device), optimizer,
              scaler, state, per_rank_batch(cfg.optim.batch_size, dist_info), steps_per_epoch, total, lr_fn,
              RunLogger(workdir, dist_info.is_main, total, state.step, cfg.train.tensorboard, request.stream,
                        cfg.train.log_every))
    run.log.info(f"{cfg.model.name}: {count(run.total, 'step')} ({run.steps_per_epoch}/epoch), global batch {cfg.optim.batch_size}"
                 + (f" = {count(dist_info.world_size, 'process')} x {run.batch}" if dist_info.enabled else "")
                 + f", {describe_runtime(rt)}"
                 + (f", resuming at step {state.step}" if start_from is not None else "")
                 + (", no checkpoint was complete yet: starting at step 0" if resume and start_from is None else ""))
    for repair in repairs:
        run.log.info(repair)
    if cfg.data.balance == "loss":
        run.class_weights = loss_weights(bundle.train.labels, len(bundle.classes)).to(rt.device)
    preflight(run)
    return run
