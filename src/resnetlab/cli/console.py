"""A training's console that may go away: the terminal closed, the reader of a pipe gone
(`resnetlab train ... 2>&1 | head`), stderr on a full disk (`2>/dev/full`).

The run's record is its files (metrics.jsonl, checkpoints, summary.json); the console only shows
them. A write that fails there raised out of the training loop and ended the run without a
checkpoint (up to an evaluation interval lost, exit 1 or 141 and not a word). Inside
`forgiving_stderr()` the first failed write turns console output off and the run goes on.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager


class ForgivingStream:
    """Wraps a text stream: writes and flushes that fail with OSError are dropped, and so is every
    write after the first failure. Other attributes (isatty, fileno, encoding) are the stream's."""

    def __init__(self, stream):
        self._stream, self.failed = stream, None

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as err:  # ValueError: a stream closed under us
                self.failed = err
        return len(text)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as err:
                self.failed = err

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def forgiving_stderr():
    """sys.stderr as a ForgivingStream for the duration of the block."""
    original = sys.stderr
    sys.stderr = ForgivingStream(original)
    try:
        yield sys.stderr
    finally:
        sys.stderr = original
