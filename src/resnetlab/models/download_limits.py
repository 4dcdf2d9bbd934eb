"""Limits of a weights download (models/hub.py): a server that sends nothing for a while, one that
sends too little to ever finish, and one that sends more than the file can be."""
from __future__ import annotations

import glob
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch.hub


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


class TooLarge(Exception):
    """Raised where a download goes past its limit, or where the server announces more (its message)."""

    def __init__(self, limit: int, announced: int | None = None):
        told = f"the server announces {announced / 1e6:,.1f} MB" if announced is not None else "it went on"
        super().__init__(f"{told}, past the {limit / 1e6:,.1f} MB the file may have: not the published file, "
                         "or a server that sends without end")


_SWAP = threading.Lock()


@contextmanager
def size_cap(limit: int):
    """torch.hub.download_url_to_file ends with TooLarge inside the block once the response goes past
    `limit` bytes (or at once where its Content-Length says more): it checks the hash only at the
    end, so a server that keeps sending filled the disk. torch.hub has no hook for this; its urlopen
    is wrapped for the block, for this thread (another thread's torch.hub is left as it is)."""
    with _SWAP:  # one swap at a time: overlapping ones would restore each other's wrapper
        urlopen, thread = torch.hub.urlopen, threading.get_ident()
        torch.hub.urlopen = lambda *args, **kwargs: (_Capped(urlopen(*args, **kwargs), limit)
                                                     if threading.get_ident() == thread else urlopen(*args, **kwargs))
        try:
            yield
        finally:
            torch.hub.urlopen = urlopen


class _Capped:
    """A urlopen response as torch.hub reads it (with, info, read), counting what it gives."""

    def __init__(self, response, limit: int):
        self.response, self.limit, self.got = response, limit, 0
        announced = response.info().get("Content-Length", "")
        if announced.strip().isdigit() and int(announced) > limit:
            response.close()
            raise TooLarge(limit, int(announced))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.response.close()

    def info(self):
        return self.response.info()

    def read(self, size: int = -1) -> bytes:
        """Never more than one byte past the limit: the byte that shows the server went past it."""
        left = self.limit + 1 - self.got
        data = self.response.read(left if size < 0 else min(size, left))
        self.got += len(data)
        if self.got > self.limit:
            raise TooLarge(self.limit)
        return data
