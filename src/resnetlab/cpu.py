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


def has_fast_bf16(flags: frozenset[str]) -> bool:
    """True for CPUs with AMX, where oneDNN's bf16 convolutions beat fp32. AVX-512 BF16 alone is not
    enough: on a Xeon without AMX, bf16 ResNets ran 0.7-0.8x as fast as fp32 (benchmarks/README.md).
    Training (engine.runtime) and inference (inference.fastpath) both choose bf16 by it."""
    return "amx_bf16" in flags
