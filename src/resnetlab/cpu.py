"""What this CPU is: its model name and the instruction-set flags that decide which kernels run.

Read once from /proc/cpuinfo (Linux); elsewhere the platform module's name and no flags, and
callers then keep their portable defaults rather than guess.
"""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """('AMD EPYC ...', frozenset({'avx2', ...})) of the first processor listed."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = platform.machine(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = frozenset(value.split())
    return model, flags or frozenset()


def cpu_flags() -> frozenset[str]:
    return cpu_info()[1]
