"""Progress as plain lines, for when stderr is a log file rather than a terminal.

A tqdm bar is useless in a file (carriage returns, one redraw per update), so off a terminal the
run writes a line every `train.log_every` steps or every ~30 s, whichever comes first (the time
matters when steps are slow, e.g. ImageNet on a CPU):

    step 1200/64000 (1.9%)  loss 1.234  err 45.31%  lr 0.1  612 img/s  eta 4h12m

The ETA is the average time per step of this session (evaluations included) times the steps left.
The decisions take the time as an argument and the clock is injected, so they are tested without
waiting.
"""
from __future__ import annotations

import math
import time
from typing import Callable

EVERY_S = 30.0  # at most this long between two lines, however slow the steps


def line_due(step: int, now: float, last_step: int, last_time: float, every_steps: int, every_s: float = EVERY_S) -> bool:
    """A new line once `every_steps` steps or `every_s` seconds have passed since the last one."""
    return step - last_step >= every_steps or now - last_time >= every_s


def eta_seconds(step: int, total: int, start_step: int, start_time: float, now: float) -> float | None:
    """Seconds left at this session's mean time per step; None before the first step."""
    done = step - start_step
    return None if done <= 0 else (now - start_time) / done * max(total - step, 0)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines:
    """When to write a progress line and what it says (one per run, rank 0, off a terminal)."""

    def __init__(self, total: int, start_step: int, every_steps: int, clock: Callable[[], float] = time.monotonic,
                 every_s: float = EVERY_S):
        self.total, self.every_steps, self.every_s, self.clock = total, max(every_steps, 1), every_s, clock
        # the log_every grid of the whole run: a resumed one's lines fell at 14, 19, ... after a stop at 9
        self.start_step, self.last_step = start_step, start_step - start_step % self.every_steps
        self.start_time = self.last_time = clock()

    def due(self, step: int) -> bool:
        return line_due(step, self.clock(), self.last_step, self.last_time, self.every_steps, self.every_s)

    def line(self, step: int, loss: float, err: float, lr: float, img_s: float) -> str:
        """The line for `step`; the next one is timed from now."""
        now = self.clock()
        self.last_step, self.last_time = step, now
        eta = eta_seconds(step, self.total, self.start_step, self.start_time, now)
        return (f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.1f}%)  loss {loss:.4g}  err {err:.2f}%  "
                f"lr {lr:.4g}  {img_s:.0f} img/s  eta {format_duration(eta)}")
