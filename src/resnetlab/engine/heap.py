"""The CPU heap of a training run: memory one step frees is kept for the next, not handed back.

A training step allocates and frees the same tensors every time. glibc's malloc maps each block
above a threshold (at most 32 MiB) afresh and unmaps it when freed, and hands the top of its heap
back once enough of it is free; the next step's tensors then start on fresh pages, a page fault
and a zeroed page per 4 KiB (~0.85 us each on the 2-core Ice Lake Xeon). An fp32 channels_last
ResNet-50 step at batch 32 faulted 75,000-561,000 times there (its 51-102 MB activations are
above every threshold glibc allows), a ResNet-20 step at batch 128 up to 14,000 times.

`held_heap()` tells glibc to take every block from its heap (M_MMAP_MAX 0) and to keep what is
freed (M_TRIM_THRESHOLD at its largest): once the heap has grown to the step's needs, steps
hardly fault (ResNet-50: 2 faults a step, median). It costs peak
memory: freed blocks are reused only where they fit, so the heap grows past the live tensors
(peak RSS +3% for that ResNet-50 step, +5% for ResNet-20's; benchmarks/host_memory_ab.py,
benchmarks/results/xeon_icelake/host_memory_ab_*.json).

On leaving, glibc's default limits come back (the mmap threshold stays where glibc had moved it:
setting any limit stops its self-adjusting) and the free memory is handed back (malloc_trim), so a
process that goes on after a run (a notebook) does not keep its peak. Elsewhere than glibc
(macOS, Windows, musl) it does nothing. train.hold_heap false turns it off.
"""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

# mallopt parameters and glibc's defaults for them (malloc/malloc.c)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # mallopt takes an int: the largest trim threshold it can be told

_depth = 0  # nested held_heap() blocks: only the outermost restores the defaults


def glibc():
    """The process's C library if it is glibc (the only one whose mallopt takes these settings), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def hold_heap() -> bool:
    """Keep freed memory in the heap for reuse from now on, for the rest of the process (a
    benchmark's worker); True if the C library took both settings."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL))


def release_heap() -> None:
    """glibc's default limits again, and the free memory handed back to the system."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(ctypes.c_size_t(0))


@contextmanager
def held_heap(enabled: bool = True):
    """Freed memory kept for reuse inside the block (where `enabled` and the C library is glibc);
    yields whether it is."""
    global _depth
    if not enabled:
        yield False
        return
    held = hold_heap()
    _depth += 1
    try:
        yield held
    finally:
        _depth -= 1
        if held and _depth == 0:
            release_heap()
