"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal or ssh session) stop a run at the next step
boundary, after a checkpoint. A SIGHUP ignored when the run starts (`nohup`) stays ignored.

Inside `StopOnSignal()` the first SIGINT/SIGTERM only records its number: it is installed before
the data is built, the training loop checks `requested` before its first step and after every
step, saves, and raises `TrainingInterrupted`. Once the last checkpoint is written nothing is
left to save, so `at_once()` makes any later signal raise `TrainingInterrupted` immediately
(during the final test, for instance). A second Ctrl-C gives up waiting and raises
KeyboardInterrupt at once.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TrainingInterrupted(Exception):
    """The run stopped on a signal; `checkpoint` (None before the first one) holds its progress.
    Exit status 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint=None, peers: tuple[int, ...] = ()):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.peers = peers  # under torchrun: the ids of the job's other processes on this machine (local_peers)
        kept = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint yet, so nothing was lost"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {kept}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled  # False: no handler is installed (train_and_evaluate(..., handle_signals=False))
        self.signum: int | None = None
        self._previous = {}
        self._at_once: tuple | None = None  # (step, checkpoint) once there is nothing left to save

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def at_once(self, step: int, checkpoint) -> None:
        """From now on a signal raises TrainingInterrupted where it lands (and one already seen, now)."""
        self._at_once = (step, checkpoint)
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, step, checkpoint)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._at_once is not None:
            raise TrainingInterrupted(signum, *self._at_once)

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # nohup: the user asked the run to outlive the terminal
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
