"""Decoding worker processes for batches of image files (torch's DataLoader), made so that they can
neither kill a run with a traceback nor leave it waiting for ever.

- Forked with the stop signals blocked until each has ignored them (Ctrl-C, SIGTERM and SIGHUP to
  the process group are the main process's to handle: it stops at a step boundary and saves).
- Sized to the shared memory their batches pass through: in a container's small /dev/shm (Docker's
  default is 64 MB) a worker whose batch did not fit printed a traceback and the run waited for that
  batch for ever, deaf to SIGTERM. Fewer workers (or none) are used, with a warning that says why.
- A batch that does not come within BATCH_TIMEOUT_S, or workers that cannot be run (too many open
  files or processes), end the run in one line; the workers are then ended for sure (they ignore
  SIGTERM, with which Python's exit would otherwise have waited on them for ever).
"""
from __future__ import annotations

import os
import shutil
import signal
import time
import warnings

import torch

from resnetlab.errors import ResnetlabWarning, UserError, first_line, option

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # the main process's to handle, never a worker's
PREFETCH = 2  # batches each worker decodes ahead (torch's default prefetch_factor)
BATCH_TIMEOUT_S = 900.0  # no batch for this long: the workers are stuck (a batch of photos takes seconds)
SHARED_MEMORY = "/dev/shm"
_SAID: set = set()  # (workers asked, workers that fit) already warned about in this process


def workers_that_fit(workers: int, batch_bytes: int, folder: str = SHARED_MEMORY) -> int:
    """`workers`, or as many as the free shared memory can hold batches for (2x margin: a batch is
    copied as it is shared), saying so in a warning when that is fewer."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # no /dev/shm (another system): torch shares memory its own way there
        return workers
    fit = min(workers, int(free // max(2 * PREFETCH * batch_bytes, 1)))
    if fit < workers and (workers, fit) not in _SAID:  # once, not at every epoch's loader
        _SAID.add((workers, fit))
        warnings.warn(f"{folder} has {free / 2**20:.0f} MiB free; {workers} decoding workers need about "
                      f"{2 * PREFETCH * batch_bytes * workers / 2**20:.0f} MiB there for their batches, so "
                      f"{fit or 'none'} {'is' if fit == 1 else 'are'} used (in Docker, --shm-size=1g gives room; "
                      f"train.workers={fit} says it)", ResnetlabWarning, stacklevel=3)
    return fit


def worker_items(dataset, workers: int, pin_memory: bool):
    """The items of `dataset` (one batch each), decoded in `workers` processes, in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=pin_memory, worker_init_fn=_worker_init,
                                         prefetch_factor=PREFETCH, timeout=BATCH_TIMEOUT_S)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until each worker has ignored them
    try:
        items = iter(loader)
    except RuntimeError as err:  # could not start them (a process or thread limit)
        raise UserError(workers_failed(err)) from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    failed = None
    try:
        try:
            yield from items
        except (RuntimeError, OSError, EOFError) as err:  # OSError: the queue of a dead worker (connection reset)
            if isinstance(err, RuntimeError) and not _from_the_loader(err):
                raise
            failed = killed_worker(items) or err  # before they are ended: which one a signal ended, if one did
    except RuntimeError as err:  # torch's SIGCHLD handler, raising again wherever the failure was being handled
        if not _from_the_loader(err):
            raise
        failed = err
    finally:
        try:
            end_workers(items)
        except RuntimeError as err:  # torch's SIGCHLD handler, for a worker that died as they were ended
            if not _from_the_loader(err):
                raise
            failed = failed or err
    if failed is not None:
        raise UserError(workers_failed(failed)) from None


def killed_worker(items, wait_s: float = 2.0) -> RuntimeError | None:
    """The error torch gives for a worker ended by a signal (the kernel's OOM killer, a kill -9), if one
    of the workers was: which of its signal handler, its closed queue (connection reset) or an EOF the
    loader meets first is a race, and the last two named no worker. A worker whose queue just closed may
    not have ended yet: looked at for up to wait_s."""
    deadline = time.monotonic() + wait_s
    try:
        while True:
            for worker in getattr(items, "_workers", []):
                if not worker.is_alive() and worker.exitcode is not None and worker.exitcode < 0:
                    name = signal.Signals(-worker.exitcode).name
                    return RuntimeError(f"DataLoader worker (pid {worker.pid}) is killed by signal: {name}")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
    except RuntimeError as err:  # torch's SIGCHLD handler said it meanwhile
        if not _from_the_loader(err):
            raise
        return err


def workers_failed(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = lines[-1] if "Original Traceback" in str(err) else first_line(err)  # a worker's own error: its last line
    return (f"the image-decoding worker processes failed ({said}): a limit on open files, processes "
            f"or shared memory ({SHARED_MEMORY})? train.workers=0{option(' (--workers 0)', '')} decodes in the main "
            "process")


def _from_the_loader(err: RuntimeError) -> bool:
    text = str(err)
    return any(words in text for words in ("DataLoader", "Too many open files", "can't start new thread",
                                           "shared memory", "worker"))


def end_workers(items) -> None:
    """torch's shutdown, then SIGKILL for a worker still there (it ignores SIGTERM; see _worker_init)."""
    shutdown = getattr(items, "_shutdown_workers", None)
    if shutdown is None:
        return
    try:
        shutdown()
    finally:
        for worker in getattr(items, "_workers", []):
            if worker.is_alive():
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:  # gone between the look and the kill
                    pass
                worker.join()


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers are processes; threads inside them would oversubscribe
    # SIGINT/SIGTERM/SIGHUP sent to the process group (Ctrl-C, `timeout`, a scheduler, a closed terminal)
    # are the main process's to handle: it stops at a step boundary, saves, and ends the workers itself. torch's
    # worker handler dies of a SIGTERM not sent by the parent, and the parent's SIGCHLD handler then
    # raised "DataLoader worker ... killed by signal" wherever it was, a checkpoint write included.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent across the fork: now ignored
