"""resnetlab's own C++ kernels, built for this CPU on first use (torch.utils.cpp_extension).

Each source file is one extension module, compiled with -march=native: the build's name carries
a hash of the source, of the headers beside it that it includes (`#include "name.h"`) and of the
CPU's flags, so an edited header rebuilds it and a shared cache directory never hands one CPU's
build to another. Where a build fails (no C++ compiler, no ninja), one warning says so and the
callers use PyTorch's own operators instead. A build that was killed halfway does not stop the
next one (`build_lock`).
"""
from __future__ import annotations

import hashlib
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from resnetlab.errors import ResnetlabWarning


class NativeKernels:
    """One source file's compiled kernels, built once per process (torch caches the build on disk,
    keyed by the name). `broken` holds why building failed, if it did; `get()` is then None."""

    def __init__(self, source: Path, prefix: str, what: str, fallback: str):
        self.source, self.prefix, self.what, self.fallback = source, prefix, what, fallback
        self.module = None
        self.broken: str | None = None
        self.lock = threading.Lock()

    def get(self):
        if self.module is None and self.broken is None:
            with self.lock:
                if self.module is None and self.broken is None:
                    self.module = self._build()
        return self.module

    def name(self) -> str:
        """The build's name: the prefix and a hash of the source, its headers and this CPU's flags."""
        from resnetlab.cpu import cpu_flags

        key = hashlib.sha256((source_text(self.source) + " ".join(sorted(cpu_flags()))).encode()).hexdigest()[:12]
        return f"{self.prefix}_{key}"

    def _build(self):
        from torch.utils import cpp_extension

        name = self.name()
        try:
            directory = Path(cpp_extension._get_build_directory(name, False))
        except Exception:  # noqa: BLE001  (a private helper of torch: only decides what to say and what to lock)
            directory = None
        if directory is not None and not (directory / f"{name}.so").exists():
            print(f"resnetlab: building the {self.what} for this CPU (once per machine; a minute or two)",
                  file=sys.stderr, flush=True)
        try:
            with build_lock(directory, self.what):
                return cpp_extension.load(name, [str(self.source)], verbose=False,
                                          extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
        except Exception as e:  # noqa: BLE001  (no compiler, no ninja, a failed build): PyTorch's operators work
            self.broken = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            warnings.warn(f"the {self.what} could not be built ({self.broken[:300]}); {self.fallback}",
                          ResnetlabWarning, stacklevel=4)
            return None


@contextmanager
def build_lock(directory: Path | None, what: str):
    """Holds an OS lock on the build directory while torch builds or loads there (Unix; elsewhere
    nothing). torch marks a build in progress with a file, `lock`, that it deletes when done; a build
    that was killed (Ctrl-C, a killed process) leaves it behind, and torch then waits for it forever.
    Every resnetlab process builds under this lock, which the OS releases however a process ends,
    so whoever holds it knows that a `lock` it finds is such a leftover, and removes it."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is None or directory is None:
        yield
        return
    with open(directory / "resnetlab.lock", "a") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another resnetlab process is building or loading it: wait, and say why
            print(f"resnetlab: waiting for another resnetlab process that is building the {what}",
                  file=sys.stderr, flush=True)
            fcntl.flock(held, fcntl.LOCK_EX)
        leftover = directory / "lock"
        if leftover.exists():
            print(f"resnetlab: an earlier build of the {what} was interrupted; building it again",
                  file=sys.stderr, flush=True)
            leftover.unlink(missing_ok=True)
        yield


LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def source_text(source: Path, seen: set | None = None) -> str:
    """The source's text followed by that of every header beside it that it includes, recursively,
    each file once."""
    seen = set() if seen is None else seen
    seen.add(source.resolve())
    text = source.read_text()
    for name in LOCAL_INCLUDE.findall(text):
        header = (source.parent / name).resolve()
        if header not in seen and header.is_file():
            text += source_text(header, seen)
    return text
