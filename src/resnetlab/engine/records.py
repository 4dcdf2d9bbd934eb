"""Typed records of everything a run writes, defined once; the one description of the formats.

Checkpoint (checkpoints/*.pt): `torch.save` of one flat dict, read back with `torch.load(...,
weights_only=True)` (tensors, plain containers, str/int/float/bool/None only), format
"resnetlab-checkpoint-v1". A checkpoint is an `Artifact` plus, for a run that can be resumed, a
`TrainingState`; on disk their keys sit side by side (the v1 layout, kept so that every file ever
written loads, and older resnetlab versions read new files):

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
  TrainingState: what a resume needs besides the artifact (a linear probe writes none)
    step, epoch                   optimizer steps done (the data position); epoch = step // steps_per_epoch
    optimizer, scaler, rng        optimizer / GradScaler state_dicts ({} when fp16 is off); every global RNG
    schedule_state                ScheduleState (plateau and warm-up memory)
    metrics       the last evaluation's MetricsRow plus best_val_top1_err, best_step, elapsed_s,
                  train_window, train_epoch (running [loss * n, correct, n] meters), reached_target
                  and num_parameters
  digest          "sha256:<hex>" over everything else (checkpoint.payload_digest); absent in files
                  written before it existed, which load unchecked

metrics.jsonl: one `MetricsRow` per evaluation (MetricsRow.FIELDS, then any keys of other
writers, e.g. the linear probe's "penalty"); summary.json: one `RunSummary`.

Compatibility: keys are never renamed or removed within a version. A reader keeps the keys it
does not know (they are written back unchanged) and refuses, in one line, a file whose "format"
names a version it does not read; the JSON files of version 1 carry no "format" key, a later
version will write one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.errors import UserError
from resnetlab.files import write_text_atomic

from .schedules import ScheduleState

CHECKPOINT_FORMAT = "resnetlab-checkpoint-v1"
METRICS_FORMAT = "resnetlab-metrics-v1"
SUMMARY_FORMAT = "resnetlab-summary-v1"
NUMBER = (int, float)


class Fields:
    """Reads a record's fields from a dict; a missing or mistyped one is a UserError naming the
    file (`where`) and the field."""

    def __init__(self, data, where, what: str, version: str, required=()):
        if not isinstance(data, dict):
            raise UserError(f"{where} is not a {what} (found {type(data).__name__})")
        found = data.get("format", version)
        if found != version:
            raise UserError(f"{where} is a {found} file; this resnetlab reads {version}: upgrade resnetlab to read it")
        missing = [k for k in required if k not in data]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}: not a complete {what}")
        self.data, self.where, self.required, self.used = data, where, required, {"format"}

    def __call__(self, key: str, kinds, default=None, nullable: bool = False):
        """The value of `key` (`default` when absent); None passes for a field that is not
        required, or is `nullable`."""
        self.used.add(key)
        value = self.data.get(key, default)
        if value is None and (nullable or key not in self.required):
            return value
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            names = " or ".join(k.__name__ for k in _tuple(kinds))
            raise UserError(f"{self.where}: {key} is {_short(value)}, expected {names}")
        return value

    def rest(self) -> dict:
        """The keys no field took: kept as they are."""
        return {k: v for k, v in self.data.items() if k not in self.used}


def _tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _short(value) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(kw_only=True)
class MetricsRow:
    """One evaluation during training: a line of metrics.jsonl, a row of metrics.csv."""
    epoch: float | None = None  # step / steps_per_epoch (fractional)
    step: int
    lr: float | None = None
    train_loss: float | None = None  # mean over the steps since the previous evaluation
    train_err: float | None = None  # percent, same steps
    val_top1_err: float | None = None  # percent; None without a val split
    val_top5_err: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    images_per_s: float | None = None
    elapsed_s: float | None = None  # training time since step 0, across resumes
    extra: dict = field(default_factory=dict)  # keys of other writers (linear probe, interrupted), kept as they are

    FORMAT = METRICS_FORMAT
    ALWAYS = ("step", "val_top1_err", "val_top5_err")  # written even when null: "no val split" is said out loud

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The engine's columns, in the order metrics.csv shows them."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def to_dict(self) -> dict:
        row = {k: getattr(self, k) for k in self.fields() if getattr(self, k) is not None or k in self.ALWAYS}
        return {**row, **self.extra}

    @classmethod
    def from_dict(cls, data, where="a metrics row") -> "MetricsRow":
        get = Fields(data, where, "metrics row", METRICS_FORMAT, required=("step",))
        numbers = {k: get(k, NUMBER) for k in cls.fields() if k != "step"}
        return cls(step=get("step", int), **numbers, extra=get.rest())


@dataclass(kw_only=True)
class RunSummary:
    """summary.json: a finished run. `test` holds evaluate_split's report of the last weights
    ("last") and of the best-by-validation weights ("best"), with per-class results
    (engine/confusion.py record_per_class)."""
    steps: int | None = None  # None for a linear probe (no steps)
    best_val_top1_err: float | None = None
    elapsed_s: float | None = None
    checkpoints: dict = field(default_factory=dict)  # {"last": path, "best": path when one was written}
    test: dict = field(default_factory=dict)  # {} without a test split
    target: dict | None = None  # train.stop_at_val_top1: {"val_top1": target, "reached": {step, val_top1, elapsed_s} | None}
    linear_probe: bool = False
    penalty: float | None = None  # linear probe: the chosen L2 strength
    extra: dict = field(default_factory=dict)

    FORMAT = SUMMARY_FORMAT

    def to_dict(self) -> dict:
        probe = {"linear_probe": True, "penalty": self.penalty} if self.linear_probe else {}
        steps = {} if self.steps is None else {"steps": self.steps}
        target = {} if self.target is None else {"target": self.target}
        return {**probe, **steps, "best_val_top1_err": self.best_val_top1_err, "elapsed_s": self.elapsed_s,
                "checkpoints": self.checkpoints, "test": self.test, **target, **self.extra}

    @classmethod
    def from_dict(cls, data, where="summary.json") -> "RunSummary":
        get = Fields(data, where, "run summary", SUMMARY_FORMAT)
        return cls(steps=get("steps", int), best_val_top1_err=get("best_val_top1_err", NUMBER),
                   elapsed_s=get("elapsed_s", NUMBER), checkpoints=get("checkpoints", dict, {}), test=get("test", dict, {}),
                   target=get("target", dict), linear_probe=get("linear_probe", bool, False),
                   penalty=get("penalty", NUMBER), extra=get.rest())

    def write(self, run_dir) -> Path:
        return write_text_atomic(Path(run_dir) / "summary.json", json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, run_dir) -> "RunSummary | None":
        """RUN_DIR/summary.json; None while the run is unfinished (no summary.json)."""
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()), path)
        except json.JSONDecodeError:
            raise UserError(f"{path} is not JSON; was the file edited?") from None

    def test_top1(self, which: str = "last") -> float | None:
        """Test top-1 (%) of the last or best weights; None without a test split."""
        return self.test.get(which, {}).get("top1")


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
        return cls(weights=get("model", dict), model_name=get("model_name", str), model_kwargs=get("model_kwargs", dict),
                   num_classes=get("num_classes", int), classes=get("classes", (list, tuple)),
                   normalizer=get("normalizer", dict, nullable=True), config=get("config", dict, nullable=True),
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


# The keys of a v1 checkpoint's "metrics" that are loop state, not the last evaluation's row.
LOOP_METRICS = ("best_val_top1_err", "best_step", "train_window", "train_epoch", "reached_target", "num_parameters")


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
                            "reached_target": loop.reached_target, "num_parameters": self.num_parameters}}

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
                         reached_target=metrics("reached_target", dict))
        row = {k: v for k, v in metrics.data.items() if k not in LOOP_METRICS}
        return cls(loop=loop, epoch=get("epoch", int, 0), optimizer=get("optimizer", dict), scaler=get("scaler", dict),
                   rng=get("rng", dict), num_parameters=metrics("num_parameters", int),
                   last_metrics=MetricsRow.from_dict({"step": step, **row}, f"{where} (metrics)"))


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
                        "go to --init or resnetlab.load_weights instead")

