"""One batch-norm + ReLU (+ residual) layer, forward + backward: plain modules against the fused
kernels (models/fused_bn.py), at the activation shapes of ResNet-20 (batch 128) and ResNet-50
(batch 32), timed alternately in one process so that a busy machine slows both alike.

    python benchmarks/fused_bn_layers.py                     # bf16 and fp32, channels_last and NCHW
    python benchmarks/fused_bn_layers.py --threads 1 --json benchmarks/results/amx_xeon/fused_bn_layers.json

With --pair, the end of a block with a projection shortcut, relu(bn(a) + shortcut_bn(b)), at the
shapes of ResNet-50's and ResNet-18/34's projections (batch 32, 224 px), three ways: the plain
modules; the shortcut's batch-norm as its module and the block's fused with the residual (before
the pair kernels); both fused as one pair (fused_bn.bn_relu_projected).

    python benchmarks/fused_bn_layers.py --pair --json benchmarks/results/amd_epyc_avx512/fused_bn_pair_layers.json
"""
import argparse
import statistics

import torch
from torch import nn

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import interleaved
from resnetlab.models.fused_bn import EXTENSION, bn_relu, bn_relu_projected

SHAPES = [(128, 16, 32), (128, 32, 16), (128, 64, 8), (32, 64, 56), (32, 256, 56), (32, 512, 28), (32, 2048, 7)]
PAIR_SHAPES = [(32, 256, 56), (32, 512, 28), (32, 1024, 14), (32, 2048, 7), (32, 128, 28), (32, 256, 14), (32, 512, 7)]


def time_layer(n, c, hw, dtype, layout, residual, reps):
    """Median seconds of forward + backward, plain and fused timed in turn after one warm-up each."""
    x = torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=layout).requires_grad_()
    r = torch.randn_like(x).requires_grad_() if residual else None
    dy = torch.randn_like(x)
    bn, relu = nn.BatchNorm2d(c), nn.ReLU(inplace=True)

    def step(fused: bool):
        def call():
            x.grad = bn.weight.grad = bn.bias.grad = None  # no accumulation pass in either
            if r is not None:
                r.grad = None
            bn_relu(bn, x, relu, r, fused=fused).backward(dy)
        return call
    times = interleaved({"plain": step(False), "fused": step(True)}, warmup=1, reps=reps)
    return statistics.median(times["plain"]), statistics.median(times["fused"])


def time_pair(n, c, hw, dtype, layout, reps):
    """Median seconds of forward + backward of relu(bn(a) + shortcut_bn(b)), three ways (see above)."""
    a, b = (torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=layout).requires_grad_() for _ in range(2))
    dy = torch.randn_like(a)
    bn, shortcut_bn, relu = nn.BatchNorm2d(c), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
    ends = {"plain": lambda: bn_relu(bn, a, relu, shortcut_bn(b)),
            "separate": lambda: bn_relu(bn, a, relu, shortcut_bn(b), fused=True),
            "pair": lambda: bn_relu_projected(bn, a, relu, shortcut_bn, b, fused=True)}

    def step(end):
        def call():
            for t in (a, b, bn.weight, bn.bias, shortcut_bn.weight, shortcut_bn.bias):
                t.grad = None
            end().backward(dy)
        return call
    times = interleaved({name: step(end) for name, end in ends.items()}, warmup=1, reps=reps)
    return {name: statistics.median(t) for name, t in times.items()}


def pair_rows(reps):
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for n, c, hw in PAIR_SHAPES:
            ms = {k: v * 1e3 for k, v in time_pair(n, c, hw, dtype, torch.channels_last, reps).items()}
            rows.append({"dtype": str(dtype).removeprefix("torch."), "channels_last": True, "shape": [n, c, hw, hw],
                         **{f"{k}_ms": v for k, v in ms.items()}, "pair_vs_separate": ms["separate"] / ms["pair"],
                         "pair_vs_plain": ms["plain"] / ms["pair"]})
            print(f"{rows[-1]['dtype']:>9} {n:>4}x{c:<5}{hw:>3}x{hw:<3} plain {ms['plain']:8.2f} ms  separate "
                  f"{ms['separate']:8.2f} ms  pair {ms['pair']:8.2f} ms  pair vs separate "
                  f"{rows[-1]['pair_vs_separate']:5.2f}x", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--pair", action="store_true", help="time a projection block's end (see above)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if EXTENSION.get() is None:
        raise SystemExit(f"the fused kernels could not be built: {EXTENSION.broken}")
    rows = pair_rows(args.reps) if args.pair else []
    for dtype in () if args.pair else (torch.bfloat16, torch.float32):
        for layout in (torch.channels_last, torch.contiguous_format):
            for n, c, hw in SHAPES:
                for residual in (False, True):
                    plain, fused = time_layer(n, c, hw, dtype, layout, residual, args.reps)
                    row = {"dtype": str(dtype).removeprefix("torch."), "channels_last": layout == torch.channels_last,
                           "shape": [n, c, hw, hw], "residual": residual, "plain_ms": plain * 1e3,
                           "fused_ms": fused * 1e3, "speedup": plain / fused}
                    rows.append(row)
                    print(f"{row['dtype']:>9} {'cl' if row['channels_last'] else 'nchw':>4} {n:>4}x{c:<5}{hw:>3}x{hw:<3}"
                          f"{'+res' if residual else '    '} plain {row['plain_ms']:8.2f} ms  fused {row['fused_ms']:8.2f} ms"
                          f"  {row['speedup']:5.2f}x", flush=True)
    if args.json:
        write_json({"machine": describe_machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "rows": rows}, args.json)


if __name__ == "__main__":
    main()
