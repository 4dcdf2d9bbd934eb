"""How the C allocator treats a CPU training step's large, short-lived tensors.

glibc's malloc maps every block of 32 MB or more afresh from the system and unmaps it when it is
freed. A ResNet-50 step at batch 32 on the CPU frees and allocates activations of 51 MB (256
channels x 56 x 56 in bf16) dozens of times, so every step touched them as new pages: measured
on the 2-core AMX Xeon (2026-12-02, benchmarks/host_memory_ab.py), 73 thousand page faults and
144 ms of kernel time a bf16 step. Told to keep freed blocks of up to 1 GiB for reuse, glibc
took 7 thousand faults and 22 ms of kernel time a step; the steps were
1.07x faster (median of per-round ratios; on this VM's drifting speed the rounds ranged
0.61-2.07x). ResNet-20, whose largest tensors are 4 MB, did not change (1.01x). The price is that
the process keeps its peak heap instead of shrinking between steps, which a training run does
anyway.

It is process-wide, so it is applied only where resnetlab's own CPU training path is (the fused
kernels' runtime switch, engine.runtime.prepare_model), once; RESNETLAB_KEEP_FREED_MEMORY=0
leaves the allocator alone. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
KEEP_BYTES = 1 << 30  # blocks up to this size come from (and go back to) the heap, not fresh maps


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks of up to 1 GiB instead of returning them to the system.
    True if it applied (glibc, not turned off by RESNETLAB_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("RESNETLAB_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask, or not one with mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold first: an mmap threshold set alone leaves trimming at its default, which
    # would hand the top of the heap back after each step.
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES))
