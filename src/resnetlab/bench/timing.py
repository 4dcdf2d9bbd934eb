"""The one clock every benchmark reads: wall time around device-synchronised work.

`stopwatch` times one block (a build, a whole run, a first compiled call); `timed` times each of
several calls of a function after a warm-up; `interleaved` does the same for several functions
round-robin (every other round in reverse), so a change in the machine's load during the run
hits all of them alike; `stats` turns per-call seconds into a median and a spread. On a GPU each
interval starts and ends with a synchronize, so it covers the work it claims to time and not only
its launch.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (nothing to wait for on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Elapsed:
    s: float = 0.0  # seconds, set when the block ends


@contextlib.contextmanager
def stopwatch(device: torch.device | str | None = None):
    """with stopwatch(device) as t: ...; then t.s is the block's wall time in seconds."""
    elapsed = Elapsed()
    sync(device)
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        sync(device)
        elapsed.s = time.perf_counter() - start


def timed(fn, warmup: int, reps: int, device: torch.device | str | None = None) -> list[float]:
    """Seconds of each of `reps` calls of fn(), after `warmup` untimed ones."""
    return interleaved({"fn": fn}, warmup, reps, device)["fn"]


def interleaved(fns: dict, warmup: int, reps: int, device: torch.device | str | None = None, *, settle: int = 0,
                starts: dict | None = None) -> dict[str, list[float]]:
    """name -> seconds of each of `reps` calls of fns[name](); every function is warmed up first,
    then they are called in turn (round_order), one timed call each per round, each after
    `settle` untimed calls of the same function (its own caches warm, not another function's).
    `starts`, if given, gets name -> time.monotonic() at the start of each timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds = {name: [] for name in fns}
    for r in range(reps):
        for name in round_order(list(fns), r):
            started, s = settled_call(fns[name], settle, device)
            seconds[name].append(s)
            if starts is not None:
                starts.setdefault(name, []).append(started)
    return seconds


def settled_call(fn, settle: int, device: torch.device | str | None = None) -> tuple[float, float]:
    """(time.monotonic() at its start, seconds) of one call of fn(), made after `settle` untimed ones."""
    for _ in range(settle):
        fn()
    started = time.monotonic()
    with stopwatch(device) as t:
        fn()
    return started, t.s


def round_order(names: list, round_index: int) -> list:
    """The order of one round: as given, and reversed every other round, so that no one is always
    timed first or last (on a machine whose speed drifts, that would favour one of them)."""
    return names if round_index % 2 == 0 else names[::-1]


def stats(seconds: list[float], items: int) -> dict:
    """Median and spread of per-repetition times, and the items/s they mean."""
    s = sorted(seconds)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731  (nearest-rank quantile)
    med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return {"reps": len(s), "median_s": med, "min_s": s[0], "max_s": s[-1], "iqr_s": q(0.75) - q(0.25),
            "per_s": items / med, "per_s_min": items / s[-1], "per_s_max": items / s[0]}
