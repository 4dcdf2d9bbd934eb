"""One batch-norm + ReLU (+ residual) layer, forward + backward: plain modules against the fused
kernels (models/fused_bn.py), at the activation shapes of ResNet-20 (batch 128) and ResNet-50
(batch 32), timed alternately in one process so that a busy machine slows both alike.

    python benchmarks/fused_bn_layers.py                     # bf16 and fp32, channels_last and NCHW
    python benchmarks/fused_bn_layers.py --threads 1 --json benchmarks/results/amx_xeon/fused_bn_layers.json
"""
import argparse
import statistics

import torch
from torch import nn

from resnetlab.bench.run import write_json
from resnetlab.bench.timing import interleaved
from resnetlab.models.fused_bn import EXTENSION, bn_relu

SHAPES = [(128, 16, 32), (128, 32, 16), (128, 64, 8), (32, 64, 56), (32, 256, 56), (32, 512, 28), (32, 2048, 7)]


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if EXTENSION.get() is None:
        raise SystemExit(f"the fused kernels could not be built: {EXTENSION.broken}")
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
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
        write_json({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
