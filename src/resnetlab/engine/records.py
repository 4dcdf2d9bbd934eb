"""Typed records of everything a run writes, defined once; the one description of the formats.

Checkpoint (checkpoints/*.pt): `torch.save` of one flat dict, read back with `torch.load(...,
weights_only=True)` (tensors, plain containers, str/int/float/bool/None only), format
"resnetlab-checkpoint-v1". A checkpoint is an `Artifact` plus, for a run that can be resumed, a
`TrainingState`; on disk their keys sit side by side (the v1 layout, kept so that every file ever
written loads, and older resnetlab versions read new files; one older than eval_pending that resumes a
checkpoint saved as its validation failed skips that step's validation):

  Artifact: what eval, predict, embed, export and --init need
    model         .weights        the state_dict, no "module."/"_orig_mod." prefixes, on CPU
    model_name    .model_name     registry name, e.g. "resnet20"
    model_kwargs  .model_kwargs   builder kwargs (config model.kwargs), without num_classes
    num_classes, classes          int; class names in label order
    normalizer    .normalizer     the data Normalizer's state (Normalizer.from_state)
    config        .config         the resolved config as a nested dict (config.config_to_dict)
    input_size    .input_size     the crop trained on (data.image_size)
    eval_resize   .eval_resize    shorter side before the centre crop at evaluation (data.eval_resize)
    class_ids     .class_ids      optional: WordNet ids of published ImageNet weights
    weights       .published_as   optional: the name of published weights converted to a checkpoint
  TrainingState: what a resume needs besides the artifact (a linear probe writes none; a file
  holds one when it has an "optimizer" key, and then every key below is required)
    step, epoch                   optimizer steps done (the data position); epoch = step // steps_per_epoch
    optimizer, scaler, rng        optimizer / GradScaler state_dicts ({} when fp16 is off); every global RNG
    schedule_state                ScheduleState (plateau and warm-up memory)
    metrics       the last evaluation's MetricsRow plus best_val_top1_err, best_step, elapsed_s,
                  train_window, train_epoch (running [loss * n, correct, n] meters), reached_target,
                  num_parameters, processes, runtime (device type, precision, channels_last, compile,
                  fused_bn as resolved) and eval_pending (the step's lr when written as the validation
                  of this step failed: a resume validates it first; else null)
  digest          "sha256:<hex>" over everything else (checkpoint.payload_digest); absent in files
                  written before it existed, which load unchecked

metrics.jsonl: one `MetricsRow` per evaluation (engine/run_records.py): the fields of
MetricsRow.fields() (epoch, step, lr, train_loss, train_err, val_top1_err, val_top5_err, val_top1,
val_top5, images_per_s, elapsed_s; null or absent when not measured), then any keys of other
writers, kept as they are (the linear probe's penalty, ...). summary.json: one `RunSummary`:
steps, best_val_top1_err, elapsed_s, checkpoints {last, best}, test {last, best} (evaluate_split's
reports with per-class results), target when train.stop_at_val_top1 is set, and linear_probe and
penalty for a linear probe.

Compatibility: keys are never renamed or removed within a version. A reader keeps the keys it
does not know (they are written back unchanged) and refuses, in one line, a file whose "format"
names a version it does not read; the JSON files of version 1 carry no "format" key, a later
version will write one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from resnetlab.data.normalize import Normalizer
from resnetlab.errors import UserError, breaks_lines, option

from .run_records import METRICS_FORMAT, NUMBER, Fields, MetricsRow
from .schedules import ScheduleState

CHECKPOINT_FORMAT = "resnetlab-checkpoint-v1"


@dataclass(kw_only=True)
class Artifact:
    """The trained model: everything needed to rebuild it and feed it as in training."""
    model_name: str
    model_kwargs: dict
    num_classes: int
    classes: list
    normalizer: dict | None  # Normalizer.state(); None only in hand-made test files
    config: dict | None  # the resolved config; None only in hand-made test files
    weights: dict  # state_dict
    input_size: int | None = None
    eval_resize: int | None = None
    class_ids: list | None = None
    published_as: str | None = None

    REQUIRED = ("model", "model_name", "model_kwargs", "num_classes", "classes", "normalizer", "config")

    def to_dict(self) -> dict:
        optional = {k: v for k, v in (("class_ids", self.class_ids), ("weights", self.published_as)) if v is not None}
        return {"model": self.weights, "model_name": self.model_name, "model_kwargs": self.model_kwargs,
                "num_classes": self.num_classes, "classes": list(self.classes), "normalizer": self.normalizer,
                "config": self.config, "input_size": self.input_size, "eval_resize": self.eval_resize, **optional}

    @classmethod
    def read(cls, get: Fields) -> "Artifact":
        num_classes, classes = get("num_classes", int), get("classes", (list, tuple))
        if len(classes) != num_classes or not all(isinstance(c, str) for c in classes):
            # predict/eval index classes by the model's output: a short list failed there with an IndexError
            kinds = "" if all(isinstance(c, str) for c in classes) else ", not all of them strings"
            raise UserError(f"{get.where}: {len(classes)} class names{kinds} for num_classes={num_classes}: "
                            "an edited or damaged checkpoint")
        odd = next((c for c in classes if breaks_lines(c)), None)  # no class folder has one: refused there
        if odd is not None:  # (ESC sequences recoloured the terminal; a newline faked predict's lines)
            raise UserError(f"{get.where}: the class name {odd!r} holds a control character: an edited or damaged "
                            "checkpoint")
        normalizer = get("normalizer", dict, nullable=True)
        if normalizer is not None:
            try:
                Normalizer.from_state(normalizer)
            except UserError as err:
                raise UserError(f"{get.where}: {err}") from None
        return cls(weights=get("model", dict), model_name=get("model_name", str), model_kwargs=get("model_kwargs", dict),
                   num_classes=num_classes, classes=classes,
                   normalizer=normalizer, config=get("config", dict, nullable=True),
                   input_size=get("input_size", int), eval_resize=get("eval_resize", int),
                   class_ids=get("class_ids", (list, tuple)), published_as=get("weights", str))

    def data_config(self) -> dict:
        """The config's data section ({} in hand-made files without a config)."""
        return (self.config or {}).get("data") or {}


@dataclass
class LoopState:
    """The training loop's memory from step to step (engine/train.py); saved in TrainingState."""
    step: int = 0
    schedule: ScheduleState = field(default_factory=ScheduleState)
    best_val_err: float | None = None
    best_step: int | None = None  # the step best.pt holds (None in checkpoints older than this field)
    elapsed_s: float = 0.0
    window: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # meter since the last log point
    epoch_meter: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # meter since the last evaluation
    reached_target: dict | None = None  # train.stop_at_val_top1: {step, val_top1, elapsed_s} once reached
    processes: int | None = None  # how many processes trained it (torchrun); None in checkpoints older than this field
    eval_pending: float | None = None  # saved as its validation failed: the step's lr (a resume validates it first)
    runtime: dict | None = None  # runtime.runtime_record of what trained it; None in checkpoints older than this field


# The keys of a v1 checkpoint's "metrics" that are loop state, not the last evaluation's row.
LOOP_METRICS = ("best_val_top1_err", "best_step", "train_window", "train_epoch", "reached_target", "num_parameters",
                "processes", "eval_pending", "runtime")


@dataclass(kw_only=True)
class TrainingState:
    """What a resume needs besides the artifact: the loop's memory and the state of every
    stateful object (optimizer, GradScaler, RNGs)."""
    loop: LoopState
    epoch: int
    optimizer: dict
    scaler: dict = field(default_factory=dict)
    rng: dict
    last_metrics: MetricsRow  # the evaluation (or interruption) this checkpoint was written at
    num_parameters: int | None = None

    REQUIRED = ("step", "optimizer", "schedule_state", "rng", "scaler", "metrics")

    @property
    def step(self) -> int:
        return self.loop.step

    def to_dict(self) -> dict:
        loop = self.loop
        return {"step": loop.step, "epoch": self.epoch, "optimizer": self.optimizer,
                "schedule_state": loop.schedule.state_dict(), "rng": self.rng, "scaler": self.scaler,
                "metrics": {**self.last_metrics.to_dict(), "best_val_top1_err": loop.best_val_err,
                            "best_step": loop.best_step, "elapsed_s": loop.elapsed_s,
                            "train_window": list(loop.window), "train_epoch": list(loop.epoch_meter),
                            "reached_target": loop.reached_target, "num_parameters": self.num_parameters,
                            "processes": loop.processes, "eval_pending": loop.eval_pending,
                            "runtime": loop.runtime}}

    @classmethod
    def read(cls, get: Fields) -> "TrainingState":
        step, where = get("step", int), get.where
        metrics = Fields(get("metrics", dict), f"{where} (metrics)", "checkpoint's metrics", METRICS_FORMAT,
                         required=("best_val_top1_err", "elapsed_s", "train_window", "train_epoch"))
        try:
            schedule = ScheduleState.from_state(get("schedule_state", dict))
        except TypeError as err:
            raise UserError(f"{where}: schedule_state does not fit this version's ScheduleState ({err})") from None
        loop = LoopState(step=step, schedule=schedule, best_val_err=metrics("best_val_top1_err", NUMBER, nullable=True),
                         best_step=metrics("best_step", int), elapsed_s=metrics("elapsed_s", NUMBER),
                         window=list(metrics("train_window", (list, tuple))),
                         epoch_meter=list(metrics("train_epoch", (list, tuple))),
                         reached_target=metrics("reached_target", dict), processes=metrics("processes", int),
                         eval_pending=metrics("eval_pending", NUMBER),
                         runtime=metrics("runtime", dict))
        row = {k: v for k, v in metrics.data.items() if k not in LOOP_METRICS}
        return cls(loop=loop, epoch=get("epoch", int, 0), optimizer=get("optimizer", dict), scaler=get("scaler", dict),
                   rng=get("rng", dict), num_parameters=metrics("num_parameters", int),
                   last_metrics=MetricsRow.from_dict({"step": step, **row}, f"{where} (metrics)"))


def check_loop(loop: LoopState, where) -> None:
    """Values no run writes are refused before a resume acts on them (a step of -7 had it drop every
    line of metrics.jsonl, then fail in a traceback). Only there: eval, predict and --init use the weights."""
    bad = [f"step {loop.step}" if loop.step < 0 else "",
           f"best_step {loop.best_step}" if loop.best_step is not None and not 0 <= loop.best_step <= loop.step else "",
           f"elapsed_s {loop.elapsed_s}" if not (math.isfinite(loop.elapsed_s) and loop.elapsed_s >= 0) else ""]
    # (a meter may hold an inf loss: fp16's skipped step, a stop before the next log point)
    bad += [f"{name} not 3 numbers" for name, meter in (("train_window", loop.window), ("train_epoch", loop.epoch_meter))
            if len(meter) != 3 or not all(isinstance(v, NUMBER) for v in meter)]
    bad = [b for b in bad if b]
    if bad:
        raise UserError(f"{where} is damaged or was not written by resnetlab ({', '.join(bad)}); resume from another "
                        f"checkpoint, or start a new run with {option('--init', 'finetune.init')} to reuse only its "
                        "weights")


@dataclass
class Checkpoint:
    """A checkpoint file: the artifact, the training state when the run can be resumed from it,
    and the keys this version does not know (written back unchanged)."""
    artifact: Artifact
    training: TrainingState | None = None
    extra: dict = field(default_factory=dict)
    digest: str | None = None  # as read from the file; save_checkpoint writes a fresh one

    FORMAT = CHECKPOINT_FORMAT

    def to_dict(self) -> dict:
        training = self.training.to_dict() if self.training is not None else {}
        return {"format": self.FORMAT, **self.artifact.to_dict(), **training, **self.extra}

    @classmethod
    def from_dict(cls, data, where="the checkpoint") -> "Checkpoint":
        """A v1 dict (the optimizer's presence says whether it holds a training state)."""
        check_checkpoint_format(data, where)
        training = "optimizer" in data
        get = Fields(data, where, f"{CHECKPOINT_FORMAT} checkpoint", CHECKPOINT_FORMAT,
                     required=Artifact.REQUIRED + (TrainingState.REQUIRED if training else ()))
        artifact = Artifact.read(get)
        state = TrainingState.read(get) if training else None
        return cls(artifact, state, {k: v for k, v in get.rest().items() if k != "digest"}, data.get("digest"))


def check_checkpoint_format(data, where) -> None:
    """One line for a file that is not a checkpoint this version reads."""
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if isinstance(found, str) and found.startswith("resnetlab-checkpoint-") and found != CHECKPOINT_FORMAT:
        raise UserError(f"{where} is a {found} checkpoint; this resnetlab reads {CHECKPOINT_FORMAT}: "
                        "upgrade resnetlab to read it")
    if found != CHECKPOINT_FORMAT:
        raise UserError(f"{where} is not a {CHECKPOINT_FORMAT} checkpoint (found {found!r}); plain weights files "
                        f"go to {option('--init', 'finetune.init')} or resnetlab.load_weights instead")

