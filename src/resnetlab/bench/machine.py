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

import torch

from resnetlab.cpu import cpu_info, cpu_vendor
from resnetlab.engine.runtime import DTYPES

from .timing import timed

# Flags that change which CPU kernels run for fp32 / bf16 / fp16 / int8 convolutions and matmuls.
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_fp16", "amx_int8", "amx_tile")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """('Intel(R) Xeon(R) ...', ['avx512f', ...]): the model and those of KEY_FLAGS it has."""
    model, flags = cpu_info()
    return model, [f for f in KEY_FLAGS if f in flags]


def describe_machine(device: torch.device | str = "cpu") -> dict:
    """The facts a reader needs to judge a result: hardware, software, threads and the date."""
    device = torch.device(device)
    model, flags = cpu_model_and_flags()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": model, "cpu_vendor": cpu_vendor(), "cpu_flags": flags, "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def matmul_peak(precision: str, device: torch.device | str = "cpu", n: int = 2048, reps: int = 5,
                max_call_s: float = 1.0) -> float:
    """Best multiply-adds per second of an n x n x n matmul in `precision` (fp32, bf16, fp16, int8).

    Best, not median, because the peak is what the hardware can do; the spread of the network
    timings already shows how much of it a busy machine lets through. int8 (CPU only) is timed on
    the quantized linear layer, i.e. the same u8 x s8 kernel library the int8 convolutions use.
    A dtype the CPU only emulates (bf16 on AVX2: ~0.15 GMAC/s) would take a minute per 2048^3
    call, so a 256^3 probe first picks the largest size whose call stays under `max_call_s`.
    """
    if precision not in (*DTYPES, "int8"):
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(DTYPES)}, int8")
    device = torch.device(device)
    probe = min(n, 256)
    probe_s = min(timed(square_matmul(precision, probe, device), 1, 2, device))  # one untimed call: thread pool, kernel choice
    size = peak_size(probe_s, probe, n, max_call_s)
    return size**3 / min(timed(square_matmul(precision, size, device), 1, reps, device))


def peak_size(probe_s: float, probe: int, n: int, max_call_s: float) -> int:
    """The largest of n, n/2, n/4, ... (not below `probe`) whose matmul, extrapolated from a
    `probe`-sized call that took `probe_s` seconds (time grows as size^3), stays under max_call_s."""
    size = n
    while size > probe and probe_s * (size / probe) ** 3 > max_call_s:
        size //= 2
    return max(size, probe)


def square_matmul(precision: str, n: int, device: torch.device | str):
    """A call of an n x n x n matrix product in `precision` on seeded operands (int8: the quantized linear layer)."""
    gen = torch.Generator().manual_seed(0)
    if precision == "int8":
        return _int8_matmul(torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen))
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
    return lambda: torch.mm(a, b)


def _int8_matmul(a: torch.Tensor, b: torch.Tensor):
    """a @ b.T with a as quint8 activations and b as prepacked qint8 weights, on the CPU."""
    import warnings

    from torch.ao.nn.quantized import Linear

    from resnetlab.models.quantize import default_backend

    torch.backends.quantized.engine = default_backend()
    with warnings.catch_warnings():  # quantized tensor creation warns of torch's deprecation plans
        warnings.simplefilter("ignore")
        layer = Linear(b.shape[1], b.shape[0], bias_=False)
        layer.set_weight_bias(torch.quantize_per_tensor(b, 0.05, 0, torch.qint8), None)
        x = torch.quantize_per_tensor(a.abs(), 0.05, 0, torch.quint8)
    return lambda: layer(x)
