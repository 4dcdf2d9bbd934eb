"""The records of a run's JSON files: one `MetricsRow` per line of metrics.jsonl, one `RunSummary`
in summary.json, and `Fields`, which reads any record's fields. The formats are described in
engine/records.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.errors import UserError, count
from resnetlab.files import write_text_atomic

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


def read_metrics(path) -> tuple[list[MetricsRow], str | None]:
    """(rows in file order, note) of a metrics.jsonl. The trainer appends each record and its
    newline in one write (engine/logger.py), so a process killed while writing leaves a LAST line
    that is not JSON and has no newline: it is left out, and `note` (else None) says so in one
    line. Any other line that is not JSON is a UserError naming it."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")  # a cut can split a character too
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(lines):
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            after = len(lines) - 1 - k
            if not after and not text.endswith("\n"):
                return rows, (f"{path}: the last record (line {i}) is cut off (a training was killed while writing "
                              f"it, or is writing it now); using the {count(len(rows), 'record')} before it")
            why = (f"yet {count(after, 'record')} follow{'s' * (after == 1)} it" if after
                   else "yet it ends in a newline, which a write cut short would not have")
            raise UserError(f"{path} line {i} is not a whole JSON record ({err.msg} at column {err.colno}), {why}: "
                            "the file is damaged (a write cut short and then appended to, or an edit); remove or "
                            "repair that line") from None
        rows.append(MetricsRow.from_dict(data, f"{path} line {i}"))
    return rows, None


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
    runtime: dict | None = None  # runtime.runtime_record of the session that tested it (precision auto resolved)
    extra: dict = field(default_factory=dict)

    FORMAT = SUMMARY_FORMAT

    def to_dict(self) -> dict:
        probe = {"linear_probe": True, "penalty": self.penalty} if self.linear_probe else {}
        steps = {} if self.steps is None else {"steps": self.steps}
        target = {} if self.target is None else {"target": self.target}
        runtime = {} if self.runtime is None else {"runtime": self.runtime}
        return {**probe, **steps, "best_val_top1_err": self.best_val_top1_err, "elapsed_s": self.elapsed_s,
                "checkpoints": self.checkpoints, "test": self.test, **target, **runtime, **self.extra}

    @classmethod
    def from_dict(cls, data, where="summary.json") -> "RunSummary":
        get = Fields(data, where, "run summary", SUMMARY_FORMAT)
        return cls(steps=get("steps", int), best_val_top1_err=get("best_val_top1_err", NUMBER),
                   elapsed_s=get("elapsed_s", NUMBER), checkpoints=get("checkpoints", dict, {}), test=get("test", dict, {}),
                   target=get("target", dict), linear_probe=get("linear_probe", bool, False),
                   penalty=get("penalty", NUMBER), runtime=get("runtime", dict), extra=get.rest())

    def write(self, run_dir) -> Path:
        return write_text_atomic(Path(run_dir) / "summary.json", json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, run_dir) -> "RunSummary | None":
        """RUN_DIR/summary.json; None while the run is unfinished (no summary.json)."""
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_bytes().decode("utf-8", errors="replace")), path)
        except json.JSONDecodeError as err:  # written whole (files.write_text_atomic): not a write cut short
            raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): the file "
                            "is damaged; restore it, or delete it to treat the run as unfinished") from None

    def test_top1(self, which: str = "last") -> float | None:
        """Test top-1 (%) of the last or best weights; None without a test split."""
        return self.test.get(which, {}).get("top1")
