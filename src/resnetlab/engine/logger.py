"""What a run tells the world: a tqdm bar on a terminal; otherwise plain progress lines (every
log_every steps or ~30 s, engine/progress.py) and one line per evaluation; metrics.jsonl and
metrics.csv in the run directory, and TensorBoard when asked for and installed.

Only rank 0 logs; the other processes get a logger that does nothing.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from resnetlab.files import APPEND_OWN, StorageError, storage_errors, write_text_atomic

from .metrics_csv import write_metrics_csv
from .progress import ProgressLines
from .run_records import MetricsRow


NOT_ON_THE_LINE = ("val_top1", "val_top5")  # accuracies: the line shows their errors


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def has_width(stream) -> bool:
    """Whether a terminal says how wide it is: tqdm draws nothing in one of 0 columns (a pty that was
    given no size: `script`, some `docker -t` and CI runners), and the run showed no progress at all."""
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no descriptor (a stream made in Python): tqdm's own default
        return True


class RunLogger:
    def __init__(self, workdir: Path | None, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = False, stream=None, log_every: int = 50, clock=time.monotonic):
        self.enabled, self.workdir = enabled, workdir
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty() and has_width(self.stream)
        self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, dynamic_ncols=True,
                        unit="step") if self.tty else None
        self.lines = ProgressLines(total_steps, start_step, log_every, clock) if enabled and not self.tty else None
        self.tb = self._tensorboard() if enabled and tensorboard else None

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.info("train.tensorboard is on but tensorboard is not installed (pip install tensorboard); skipping it")
            return None
        return SummaryWriter(str(self.workdir / "tensorboard"))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def progress(self, step: int, **values) -> None:
        """Called every log_every steps with loss, err, lr, img_s: moves the bar (terminal) or writes
        a progress line (log file), and feeds TensorBoard."""
        if self.bar is not None:
            self.bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)
            self.bar.update(step - self.bar.n)  # redraws, with the new postfix
        if self.line_due(step):
            self.progress_line(step, **values)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"train/{key}", value, step)

    def line_due(self, step: int) -> bool:
        """Off a terminal: is a progress line due (log_every steps or ~30 s since the last one)?"""
        return self.lines is not None and self.lines.due(step)

    def progress_line(self, step: int, loss: float, err: float, lr: float, img_s: float) -> None:
        if self.lines is not None:
            self.info(self.lines.line(step, loss, err, lr, img_s))

    def record(self, metrics: MetricsRow) -> None:
        """One evaluation: a line in metrics.jsonl and, off a terminal, one line of text."""
        if not self.enabled:
            return
        path = self.workdir / "metrics.jsonl"
        row = metrics.to_dict()
        if path.is_symlink():  # a run's own file, never appended to through a link (a copy made with cp -as):
            write_text_atomic(path, path.read_text(encoding="utf-8") if path.is_file() else "")  # its own copy
        with storage_errors(path), open(os.open(path, APPEND_OWN, 0o644), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before the checkpoint of this step is written
        self._update_csv()
        shown = [k for k in MetricsRow.fields() if k not in NOT_ON_THE_LINE]
        self.info("  ".join(f"{k} {_fmt(row[k])}" for k in shown if row.get(k) is not None))
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(f"eval/{key}", value, metrics.step)

    def _update_csv(self) -> None:
        """metrics.csv follows metrics.jsonl; a CSV held open elsewhere (a spreadsheet on Windows
        locks it) must not stop the run."""
        try:
            write_metrics_csv(self.workdir)
        except StorageError as err:  # files.atomic_write's words: the file and the storage's reason
            self.info(f"{err}; metrics.jsonl has every record")
        except OSError as err:
            self.info(f"could not update {self.workdir / 'metrics.csv'} ({err.strerror or err}); "
                      "metrics.jsonl has every record")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
