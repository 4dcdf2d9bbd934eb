"""A console that may go away: the terminal closed, the reader of a pipe gone
(`resnetlab train ... 2>&1 | head`), stderr or stdout on a full disk (`>/dev/full`).

stderr only shows what a command does: a training's record is its files (metrics.jsonl,
checkpoints, summary.json). A write that fails there raised out of the training loop and ended the
run without a checkpoint (up to an evaluation interval lost, exit 1 or 141 and not a word). Inside
`forgiving_stderr()` the first failed write turns console output off and the command goes on.
stdout is the result itself: a write that fails there (`checked_stdout()`) ends the command with
one line on stderr, not a traceback and a status that read as "some files were unreadable".
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


class ImageProgress:
    """A tqdm bar of the images done, on stderr when it is a terminal that says its width (nothing in a
    log or a pipe), gone when the command ends: embed, eval and predict --json printed nothing for
    minutes. Called as the library's `progress(done, total)`; a context manager."""

    def __init__(self, what: str):
        from resnetlab.engine.logger import has_width

        self.what, self.bar = what, None
        self.on = sys.stderr.isatty() and has_width(sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        if self.on and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.what, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


class OutputFailed(Exception):
    """stdout could not be written (a full disk, an I/O error); a reader gone away is BrokenPipeError."""

    def __init__(self, err: OSError):
        super().__init__(err.strerror or str(err))


class CheckedStdout:
    """Wraps stdout: a write or flush that fails with OSError raises OutputFailed (BrokenPipeError as it is)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise OutputFailed(err) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as err:
            raise OutputFailed(err) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def checked_stdout():
    """sys.stdout as a CheckedStdout for the duration of the block."""
    return _wrapped("stdout", CheckedStdout)


def forgiving_stderr():
    """sys.stderr as a ForgivingStream for the duration of the block."""
    return _wrapped("stderr", ForgivingStream)


@contextmanager
def _wrapped(name: str, wrapper):
    original = getattr(sys, name)
    setattr(sys, name, wrapper(original))
    try:
        yield getattr(sys, name)
    finally:
        setattr(sys, name, original)
