"""What this CPU is: its model name, vendor and the instruction-set flags that decide which kernels
run.

Read once from /proc/cpuinfo (Linux); elsewhere the platform module's name and no flags, and
callers then keep their portable defaults rather than guess.
"""
from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=1)
def _first_processor() -> dict[str, str] | None:
    """The fields of the first processor /proc/cpuinfo lists, or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info() -> tuple[str, frozenset[str]]:
    """('AMD EPYC ...', frozenset({'avx2', ...})) of the first processor listed."""
    fields = _first_processor()
    if fields is None:
        return platform.processor() or platform.machine(), frozenset()
    return fields.get("model name") or platform.machine(), frozenset(fields.get("flags", "").split())


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id: 'GenuineIntel', 'AuthenticAMD', ... ('' where unknown)."""
    return (_first_processor() or {}).get("vendor_id", "")


def cpu_flags() -> frozenset[str]:
    return cpu_info()[1]


def has_amx(flags: frozenset[str]) -> bool:
    """AMX's bf16 tiles, which resnetlab's own weight-gradient kernel (models/conv_wgrad.py) runs on where it can."""
    return "amx_bf16" in flags


def has_fast_bf16(flags: frozenset[str], vendor: str = "") -> bool:
    """True for CPUs whose bf16 arithmetic outruns fp32, where `auto` picks bf16 for training
    (engine.runtime) and inference (inference.fastpath): those with AMX, and AMD's with AVX-512 BF16 (Zen 4 and later), which run
    VDPBF16PS at twice the fp32 FMA's multiply-adds: on a 2-core EPYC the 2048^3 matmul ran at 209
    against 82 GMAC/s and bf16 ResNet-20 training at 1.6x fp32 (benchmarks/results/amd_epyc_avx512/).
    AVX-512 BF16 on an Intel Xeon without AMX is not enough: there bf16 matmuls ran at half the fp32
    rate and bf16 ResNets at 0.7-0.8x of fp32 (benchmarks/README.md)."""
    return has_amx(flags) or (vendor == "AuthenticAMD" and "avx512_bf16" in flags)


def usable_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
