"""Time limits of a weights download (models/hub.py): a server that sends nothing for a while, and
one that sends too little to ever finish."""
from __future__ import annotations

import glob
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def stall_timeout(seconds: float):
    """Sockets opened inside the block give up after `seconds` without data (socket's default
    timeout is process-wide: it is restored when the block ends)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


class TooSlow(Exception):
    """Raised by slow_guard's timer where the download is."""


@contextmanager
def slow_guard(staging: Path, slow_s: float, every: float = 5.0):
    """End a download whose file grows by less than one read chunk (128 kB) in `slow_s` seconds: a
    server sending a byte every few seconds never trips the per-read timeout, and would take weeks.
    A timer signal looks at torch.hub's .partial file (written a chunk at a time); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    grown = [time.monotonic(), -1]  # when the file last grew, its size then

    def check(signum, frame):
        try:
            size = sum(p.stat().st_size for p in staging.parent.glob(f"{glob.escape(staging.name)}.*.partial"))
        except OSError:  # renamed or removed between the listing and the look: the download moved on
            return
        if size != grown[1]:
            grown[:] = [time.monotonic(), size]
        elif time.monotonic() - grown[0] > slow_s:
            raise TooSlow

    previous = signal.signal(signal.SIGALRM, check)
    every = min(every, slow_s / 4)
    signal.setitimer(signal.ITIMER_REAL, every, every)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
