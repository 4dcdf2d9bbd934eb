"""Each variant in its own process, all of them timed round-robin: isolated *and* same-time.

On the 2-core AMX Xeon the benchmarks of record run on, a bf16 2048^3 matrix product took
9.7-44.1 ms within 90 seconds of an otherwise idle VM, an fp32 one 57.2-99.2 ms
(benchmarks/peak_drift.py). Timing the variants one after another then compares a bf16 variant
timed in a slow phase with a baseline timed in a fast one: the same ResNet-20 suite gave 3.15x and
5.36x within fifteen minutes. Here every variant is set up in a fresh spawned process (its own
peak memory, no compiled graph shared with another), one at a time; then the parent asks each
process in turn for one timed call per round, so a change in the machine's speed hits every
variant in the same round, and the per-round ratios to the baseline (run.add_ratios) show how
far it moved.

Only one process works at any moment: the others wait on their pipe. A timed call directly
follows an untimed call of the same variant, so that it runs with its own caches and heap warm,
as in a training loop, not after another variant's call; then the process hands its free heap
pages back (malloc_trim), so that the processes waiting hold little memory (a ResNet-50 training
process otherwise keeps ~2.4 GB between steps, and the seven of its suite filled 23 of 24 GB).
A child ignores Ctrl-C (the parent handles it and closes the pipes, which ends them) and reports
its own errors, which the parent raises as they were.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import resource
import signal
from pathlib import Path

import torch

from resnetlab.errors import UserError

from .measure import Prepared, prepare_infer, prepare_train, rows_from_times
from .spec import BenchSpec, Variant
from .timing import stopwatch


def measure_interleaved(spec: BenchSpec, images, variants: list[Variant]) -> list[dict]:
    """Rows for `variants` (see measure.rows_from_times), each set up in its own process."""
    context = multiprocessing.get_context("spawn")
    processes: list[VariantProcess] = []
    try:
        for v in variants:  # set up one at a time: a first step (a compile) is timed on its own
            check_memory_for_another(processes, v)
            processes.append(VariantProcess(context, spec, images, v))
        for p in processes:
            p.request("warmup", spec.warmup)
        times = {(i, name): [] for i, p in enumerate(processes) for name in p.timers}
        for _ in range(spec.reps):
            for i, p in enumerate(processes):
                for name in p.timers:
                    times[i, name].append(p.request("time", name))
        return rows_from_times([(p.variant, p.timers, p.info) for p in processes], times)
    finally:
        for p in processes:
            p.close()


def check_memory_for_another(processes: list[VariantProcess], variant: Variant, margin: float = 1.2) -> None:
    """Refuse to start one more process when the memory left would not hold it at its peak.

    The processes set up so far stay alive, and the next one needs about the largest peak seen so
    far: without this check the kernel's OOM killer would end one of them part-way instead."""
    available = available_memory()
    if not processes or available is None:
        return
    need = margin * max(p.peak_rss for p in processes)
    if available < need:
        raise UserError(f"not enough memory to measure {variant.label} in a process of its own: "
                        f"{available / 2**30:.1f} GiB available, ~{need / 2**30:.1f} GiB needed with "
                        f"{len(processes)} variant process(es) kept alive; run with --no-isolate "
                        f"(all variants in one process) or with fewer variants")


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc malloc_trim), so that a process waiting
    for its turn holds its live tensors, not the freed activations of its last step."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


class VariantProcess:
    """One variant, set up in a spawned child process that times one call at a time on request."""

    def __init__(self, context, spec: BenchSpec, images, variant: Variant):
        self.variant = variant
        self.conn, child_end = context.Pipe()
        # Not a daemon: the baseline's DataLoader may start worker processes of its own in it.
        self.process = context.Process(target=_serve, args=(child_end, spec, images, variant),
                                       name=f"resnetlab-bench-{variant.label}")
        self.process.start()
        child_end.close()  # so that a child which dies is seen as the end of the pipe
        try:
            self.timers, self.info, self.peak_rss = self._reply()
        except BaseException:
            self.close()
            raise

    def request(self, *message):
        try:
            self.conn.send(message)
        except (OSError, ValueError):  # its end of the pipe is closed: the process is gone
            self._gone()
        return self._reply()

    def _reply(self):
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self._gone()
        if kind == "error":
            raise value
        return value

    def _gone(self):
        self.process.join(5)
        code = self.process.exitcode
        how = (f"exit code {code}" if code is None or code >= 0 else
               f"killed by signal {-code}" + (", out of memory?" if code == -signal.SIGKILL else ""))
        raise UserError(f"the process measuring {self.variant.label} ended without a result ({how})") from None

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.conn.close()
        self.process.join(5)  # an idle child stops at once; a busy one (after Ctrl-C) is killed
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _serve(conn, spec: BenchSpec, images, variant: Variant) -> None:
    """The child: set the variant up, then answer requests until told to stop or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        prepare = prepare_train if spec.task == "train" else prepare_infer
        prepared: Prepared = prepare(spec, variant, images, Path(spec.cache_dir))
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        release_free_memory()
        conn.send(("ok", ({name: items for name, (_, items) in prepared.timers.items()}, prepared.info, peak_rss)))
        device = torch.device(spec.device)
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            if message[0] == "warmup":
                for fn, _ in prepared.timers.values():
                    for _ in range(message[1]):
                        fn()
                release_free_memory()
                conn.send(("ok", None))
            else:  # ("time", timer name)
                fn, _ = prepared.timers[message[1]]
                fn()  # untimed: this variant's caches and heap warm again after the other variants' calls
                with stopwatch(device) as t:
                    fn()
                release_free_memory()  # before replying, so that it overlaps no other variant's call
                conn.send(("ok", t.s))
    except (EOFError, BrokenPipeError):  # the parent is gone: nothing to report to
        return
    except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
        try:
            conn.send(("error", e))
        except Exception:  # noqa: BLE001  (an exception that cannot be pickled: its text then)
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
