"""What a benchmark ran on, and that machine's measured matrix-multiply peak.

Results are only comparable on the same machine, so every result file carries the CPU model,
the instruction-set flags that decide which kernels oneDNN picks (avx512_bf16, amx_*), the
core count, the torch version and the date. The peak is measured, not taken from a spec sheet:
a large square matmul in each dtype, best of a few repetitions, in multiply-adds per second.
"""
from __future__ import annotations

import datetime
import os
import platform
import time

import torch

# Flags that change which CPU kernels run for fp32 / bf16 / fp16 convolutions and matmuls.
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_fp16", "amx_int8", "amx_tile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """('Intel(R) Xeon(R) ...', ['avx512f', ...]) from /proc/cpuinfo; platform data elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, [f for f in KEY_FLAGS if f in flags]


def describe_machine(device: torch.device | str = "cpu") -> dict:
    """The facts a reader needs to judge a result: hardware, software, threads and the date."""
    device = torch.device(device)
    model, flags = cpu_model_and_flags()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": model, "cpu_flags": flags, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def matmul_peak(precision: str, device: torch.device | str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """Best multiply-adds per second of an n x n x n matmul in `precision` (fp32, bf16, fp16).

    Best, not median, because the peak is what the hardware can do; the spread of the network
    timings already shows how much of it a busy machine lets through.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(DTYPES)}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
    best = float("inf")
    for i in range(reps + 1):  # the first call warms up (thread pool, kernel selection)
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return n**3 / best


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it claims to time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
