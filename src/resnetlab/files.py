"""Atomic file writes: a reader (or a crash, a full disk, Ctrl-C) never sees half a file.

Everything a run leaves behind (checkpoints, config.yaml, summary.json, the decoded-image caches,
a downloaded archive, benchmark results) goes through `atomic_write`: the bytes go to a
temporary file in the same folder, are flushed to disk, and only then renamed over the target,
which POSIX and Windows both do in one step. On any error the temporary file is removed and an
existing target is left as it was.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """`with atomic_write(path) as f: f.write(...)`; mode "wb" (default) or "w" (text, UTF-8)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename never crosses file systems; the pid keeps concurrent writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_text_atomic(path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every OS, and harmless to skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
