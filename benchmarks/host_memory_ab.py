"""Training steps with glibc told to keep freed blocks of up to 1 GiB for reuse against its default
(blocks of 32 MB or more mapped afresh each time and unmapped when freed), in one process: the
allocator's setting is switched before every step pair, the order alternating by round, so a
drift in the machine's speed hits both alike. Also counts page faults and kernel time per step.
Tried for CPU training and not kept (benchmarks/README.md, "Freed memory kept for reuse").

    python benchmarks/host_memory_ab.py --model resnet50 --precision bf16 --rounds 10
    python benchmarks/host_memory_ab.py --model resnet20 --rounds 20 --json benchmarks/results/amx_xeon/host_memory_ab_resnet20.json
"""
import argparse
import ctypes
import resource
import statistics
import time

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.measure import bench_step_parts
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import round_order
from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.engine.train import train_step
from resnetlab.models import create_model

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
KEEP_BYTES = 1 << 30
# glibc's own caps of its self-adjusting thresholds; setting them fixes them (no more adjusting),
# so the "default" side is close to, not exactly, a process that never called mallopt.
GLIBC_CAPS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


def set_allocator(keep: bool) -> None:
    libc = ctypes.CDLL(None)  # glibc only (Linux)
    for param, cap in GLIBC_CAPS.items():  # the mmap threshold first: older glibc refuses > 32 MiB
        if not libc.mallopt(param, KEEP_BYTES if keep else cap):
            raise SystemExit(f"this C library refused mallopt({param}, ...): nothing to compare")
    if not keep:
        libc.malloc_trim(ctypes.c_size_t(0))  # hand back what the other setting kept, as the default would have


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json")
    args = parser.parse_args()
    batch, size = (32, 224) if args.model == "resnet50" else (128, 32)
    torch.manual_seed(0)
    rt = Runtime(torch.device("cpu"), args.precision, True, fused_bn=True)  # the kernels of a training run
    parts = bench_step_parts(prepare_model(create_model(args.model, num_classes=10).train(), rt), rt)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    seconds, faults, kernel = {True: [], False: []}, {True: [], False: []}, {True: [], False: []}
    for r in range(args.rounds):
        for keep in round_order([True, False], r):
            set_allocator(keep)
            train_step(parts, x, y)  # untimed: the heap settles into this setting
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            train_step(parts, x, y)
            seconds[keep].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[keep].append(after.ru_minflt - before.ru_minflt)
            kernel[keep].append(after.ru_stime - before.ru_stime)
    ratios = [d / k for d, k in zip(seconds[False], seconds[True])]
    result = {"machine": describe_machine("cpu"), "model": args.model, "precision": args.precision, "batch_size": batch,
              "rounds": args.rounds, "seconds": {"kept": seconds[True], "default": seconds[False]},
              "faults": {"kept": faults[True], "default": faults[False]},
              "kernel_s": {"kept": kernel[True], "default": kernel[False]},
              "default_over_kept_per_round": [min(ratios), statistics.median(ratios), max(ratios)]}
    for keep, name in ((False, "default"), (True, "kept")):
        print(f"{name:>8}: {1e3 * statistics.median(seconds[keep]):7.0f} ms a step, {statistics.median(faults[keep]):8.0f} page "
              f"faults, {1e3 * statistics.median(kernel[keep]):5.0f} ms in the kernel")
    print(f"default / kept, per round: median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)")
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
