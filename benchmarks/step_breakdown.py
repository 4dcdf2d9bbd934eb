"""Where one CPU training step's time goes: every aten operator (a TorchDispatchMode times each
call; CPU operators run synchronously) and every call of resnetlab's own kernels (fused
batch-norm, convolution kernels: built as C++ extensions, they bypass the dispatcher), per
operator and per input shape, over a few steps of the automatic runtime (bf16 channels_last +
fused batch-norm on AMX or Zen 4). Without torch.profiler, whose own cost doubled a ResNet-50
step here. The streaming reference beside it: `x + y` of the step's largest activation's size,
the speed of memory that elementwise kernels cannot beat.

    python benchmarks/step_breakdown.py --model resnet50 --batch 32 --size 224 --json benchmarks/results/amx_xeon/step_breakdown_resnet50.json
    python benchmarks/step_breakdown.py --model resnet20 --batch 128 --size 32
"""
import argparse
import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.measure import bench_step_parts
from resnetlab.bench.run import write_json
from resnetlab.engine.heap import hold_heap, huge_pages
from resnetlab.engine.runtime import Runtime, prepare_model, resolve_precision
from resnetlab.engine.train import train_step
from resnetlab.models import conv_direct, conv_wgrad, create_model, fused_bn

TOTALS: dict = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()


def record(name: str, args, seconds: float) -> None:
    shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:2]
    TOTALS[(name, shapes)] += seconds
    CALLS[(name, shapes)] += 1


class Timed(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        record(str(func), args, time.perf_counter() - start)
        return out


class TimedKernels:
    """A built extension module whose every function call is timed."""

    def __init__(self, module, label: str):
        self.module, self.label = module, label

    def __getattr__(self, name):
        function = getattr(self.module, name)
        if not callable(function):
            return function

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            record(f"{self.label}.{name}", args, time.perf_counter() - start)
            return out
        return timed


def streaming_gb_per_s(numel: int, dtype: torch.dtype) -> float:
    """GB/s of `x + y` into a buffer of its own (two reads, one write) at this size, median of 9."""
    x, y = torch.randn(numel).to(dtype), torch.randn(numel).to(dtype)
    out, times = torch.empty_like(x), []
    for _ in range(11):
        start = time.perf_counter()
        torch.add(x, y, out=out)
        times.append(time.perf_counter() - start)
    return 3 * x.numel() * x.element_size() / sorted(times[2:])[4] / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    hold_heap()  # as `resnetlab train` runs (engine/heap.py)
    rt = Runtime(torch.device("cpu"), resolve_precision("auto", torch.device("cpu")), True, fused_bn=True)
    parts = bench_step_parts(prepare_model(create_model(args.model, num_classes=10).train(), rt), rt)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    for _ in range(2):
        train_step(parts, x, y)
    huge_pages()
    for kernels, label in ((fused_bn.EXTENSION, "fused_bn"), (conv_wgrad.KERNELS, "conv_wgrad"),
                           (conv_direct.KERNELS, "conv_direct")):
        if kernels.module is not None:
            kernels.module = TimedKernels(kernels.module, label)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(parts, x, y)
    plain = (time.perf_counter() - start) / args.steps
    TOTALS.clear()
    CALLS.clear()
    with Timed():
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(parts, x, y)
        timed = (time.perf_counter() - start) / args.steps
    per_op = collections.defaultdict(float)
    for (name, _), seconds in TOTALS.items():
        per_op[name] += seconds / args.steps
    rows = sorted(((seconds / args.steps, CALLS[key] // args.steps, *key) for key, seconds in TOTALS.items()),
                  reverse=True)
    largest = max((torch.Size(s).numel() for _, _, _, shapes in rows for s in shapes[:1]), default=1)
    stream = streaming_gb_per_s(largest, torch.bfloat16 if rt.precision == "bf16" else torch.float32)
    print(f"{args.model} {rt.precision} channels_last, batch {args.batch}, {args.size} px: step {plain * 1e3:.0f} ms, "
          f"{timed * 1e3:.0f} ms with every call timed, of which {sum(per_op.values()) * 1e3:.0f} ms in the calls")
    print(f"streaming reference: x + y of {largest:,} values, {stream:.1f} GB/s")
    for name, seconds in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{seconds * 1e3:9.1f} ms/step  {name}")
    print()
    for seconds, calls, name, shapes in rows[:args.top]:
        print(f"{seconds * 1e3:9.1f} ms/step  x{calls:<3d} {name} {shapes}")
    if args.json:
        write_json({"machine": describe_machine(), "model": args.model, "batch": args.batch, "size": args.size,
                    "precision": rt.precision, "step_s": plain, "timed_step_s": timed, "streaming_gb_per_s": stream,
                    "per_op_s": dict(per_op),
                    "per_call": [{"op": n, "shapes": s, "calls_per_step": c, "s_per_step": t} for t, c, n, s in rows]},
                   args.json)


if __name__ == "__main__":
    main()
