"""Each variant in its own process, all of them timed round-robin: isolated *and* same-time.

On the 2-core AMX Xeon the benchmarks of record run on, a bf16 2048^3 matrix product took
9.7-44.1 ms within 90 seconds of an otherwise idle VM, an fp32 one 57.2-99.2 ms
(benchmarks/peak_drift.py). Timing the variants one after another then compares a bf16 variant
timed in a slow phase with a baseline timed in a fast one: the same ResNet-20 suite gave 3.15x and
5.36x within fifteen minutes. Here every variant is set up in a fresh spawned process (its own
peak memory, no compiled graph shared with another), one at a time; then the parent asks each
process in turn for one timed call per round (every other round in reverse), so a change in
the machine's speed hits every variant in the same round, and the per-round ratios to the
baseline (run.add_ratios) show how far it moved. A round of the ResNet-50 suite takes about 75 s
(an untimed and a timed step of each of seven variants), so there the ratios of one round still
span a minute; the rounds' alternating order keeps that from favouring one variant.

Only one process works at any moment: the others wait on their pipe. A timed call directly
follows an untimed call of the same variant, so that it runs with its own caches and heap warm,
as in a training loop, not after another variant's call; then the process hands its free heap
pages back (malloc_trim), so that the processes waiting hold little memory (a ResNet-50 training
process otherwise keeps ~2.4 GB between steps, and the seven of its suite filled 23 of 24 GB).
A child ignores Ctrl-C from its start (the parent handles it and closes the pipes, which ends
them) and reports its own errors, which the parent raises as they were, the child's traceback
attached as their cause.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import pickle
import signal
import threading
import traceback
from pathlib import Path

import torch

from resnetlab.errors import UserError, command_line, in_command

from .measure import SETTLE, Prepared, peak_rss, prepare_infer, prepare_train, rows_from_times
from .spec import BenchSpec, Variant
from .timing import round_order, settled_call


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
        starts = {key: [] for key in times}
        for r in range(spec.reps):
            for i in round_order(list(range(len(processes))), r):
                for name in processes[i].timers:
                    seconds, started = processes[i].request("time", name)
                    times[i, name].append(seconds)
                    starts[i, name].append(started)
        return rows_from_times([(p.variant, p.timers, p.info) for p in processes], times, starts)
    finally:
        close_all(processes)


def close_all(processes: list[VariantProcess]) -> None:
    """Stop every process, even if a second Ctrl-C interrupts stopping one of them."""
    for p in processes:
        try:
            p.close()
        except BaseException:  # noqa: BLE001  (a KeyboardInterrupt: kill it, then go on with the rest)
            p.process.kill()
    for p in processes:
        p.process.join()


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
    """Bytes that can be allocated without swapping or meeting a container's limit: Linux's
    MemAvailable, and the memory cgroup's headroom where it sets a limit; None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    headroom = cgroup_headroom()
    return available if headroom is None else min(available, headroom)


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the memory cgroup's limit still allows (cgroup v2, else v1), counting the page cache it
    may drop (inactive files) as free; None without a limit or a cgroup to read."""
    for folder, limit_name, usage_name, inactive_key in ((root, "memory.max", "memory.current", "inactive_file"),
                                                         (root / "memory", "memory.limit_in_bytes",
                                                          "memory.usage_in_bytes", "total_inactive_file")):
        try:
            limit = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text())
            stat = dict(line.split()[:2] for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:  # v1 writes "no limit" as a number near 2^63
            return None
        return max(0, int(limit) - usage + int(stat.get(inactive_key, 0)))
    return None


class RemoteTraceback(Exception):
    """The traceback of an error raised in a variant's process (the cause of the error re-raised here)."""

    def __str__(self) -> str:
        return self.args[0]


class VariantProcess:
    """One variant, set up in a spawned child process that times one call at a time on request."""

    def __init__(self, context, spec: BenchSpec, images, variant: Variant):
        self.variant = variant
        self.conn, child_end = context.Pipe()
        # Not a daemon: the baseline's DataLoader, or inductor's compile workers, may start
        # processes of their own in it.
        self.process = context.Process(target=_serve, args=(child_end, spec, images, variant, in_command()),
                                       name=f"resnetlab-bench-{variant.label}")
        try:
            with sigint_ignored():  # the child inherits it: no traceback if Ctrl-C comes while it imports
                self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_end.close()  # so that a child which dies is seen as the end of the pipe
        try:
            self.timers, self.info, self.peak_rss = self.request("setup")
        except BaseException:
            self.close()
            raise

    def request(self, *message):
        try:
            self.conn.send(message)
        except (OSError, ValueError):  # its end of the pipe is closed: the process is gone
            self._gone()
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self._gone()
        if kind == "error":
            error, remote = value
            if error is None:  # an exception that could not travel: its text did
                raise RuntimeError(f"the process measuring {self.variant.label} failed:\n{remote}")
            raise error from RemoteTraceback(remote)
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


class sigint_ignored:
    """SIGINT ignored while the block runs (in the main thread; elsewhere signals are not ours to set)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _Variant:
    """The child's side: the variant set up, then one request at a time."""

    def __init__(self, spec: BenchSpec, images, variant: Variant):
        self.spec, self.images, self.variant = spec, images, variant
        self.device = torch.device(spec.device)
        self.prepared: Prepared | None = None

    def handle(self, message: tuple):
        kind = message[0]
        if kind == "setup":
            if self.spec.threads:
                torch.set_num_threads(self.spec.threads)
            prepare = prepare_train if self.spec.task == "train" else prepare_infer
            self.prepared = prepare(self.spec, self.variant, self.images, Path(self.spec.cache_dir))
            peak = peak_rss()
            release_free_memory()
            return {name: items for name, (_, items) in self.prepared.timers.items()}, self.prepared.info, peak
        if kind == "warmup":
            for fn, _ in self.prepared.timers.values():
                for _ in range(message[1]):
                    fn()
            release_free_memory()
            return None
        fn, _ = self.prepared.timers[message[1]]  # ("time", timer name)
        # SETTLE untimed calls first: this variant's caches and heap warm again after the others' calls
        started, seconds = settled_call(fn, SETTLE, self.device)
        release_free_memory()  # before replying, so that it overlaps no other variant's call
        return seconds, started


def _serve(conn, spec: BenchSpec, images, variant: Variant, words: bool = False) -> None:
    """The child: answer requests until told to stop, an error, or the parent's end closing. `words`:
    its errors in a command's words (`--precision fp32`), as the parent's would be (errors.in_command)."""
    with command_line(words):
        _answer(conn, spec, images, variant)


def _answer(conn, spec: BenchSpec, images, variant: Variant) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    served = _Variant(spec, images, variant)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone: nothing to report to
            return
        if message[0] == "stop":
            return
        try:
            reply = ("ok", served.handle(message))
        except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
            reply = ("error", (portable(e), traceback.format_exc()))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        if reply[0] == "error":
            return


def portable(error: Exception) -> Exception | None:
    """The exception itself if it survives the trip through a pipe (pickled here, unpickled in
    the parent); a UserError that does not, as a plain UserError of its message (one line still); else
    None (its traceback's text still goes)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001  (any pickling failure: a lambda inside, an __init__ with other arguments)
        return UserError(str(error)) if isinstance(error, UserError) else None
