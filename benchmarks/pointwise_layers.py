"""One 1x1 convolution, forward + backward, as nn.Conv2d (oneDNN) against the same convolution as a
matrix product (models/blocks.conv1x1_as_matmul, which bf16 training on the CPU uses:
models/blocks.pointwise), at ResNet-50's shapes (batch 32, 224 px), channels_last, in bf16
(autocast) and fp32, timed alternately in one process so that a busy machine slows both alike.

    python benchmarks/pointwise_layers.py                       # bf16 (autocast) and fp32
    python benchmarks/pointwise_layers.py --json benchmarks/results/amx_xeon/pointwise_layers.json
"""
import statistics

import torch
from torch import nn

from resnetlab.bench.layers import DTYPES, layer_arguments, layer_tensors, save_rows, training_call
from resnetlab.bench.timing import interleaved
from resnetlab.models.blocks import conv1x1_as_matmul

# (input channels, output channels, side): every stride-1 1x1 convolution of a ResNet-50 bottleneck
SHAPES = [(64, 64, 56), (64, 256, 56), (256, 64, 56), (256, 128, 56), (128, 512, 28), (512, 128, 28),
          (512, 256, 28), (256, 1024, 14), (1024, 256, 14), (1024, 512, 14), (512, 2048, 7), (2048, 512, 7)]


def time_layer(cin: int, cout: int, side: int, dtype: torch.dtype, batch: int, reps: int) -> tuple[float, float]:
    """Median seconds of forward + backward: the module, then the matrix product, in turn."""
    conv = nn.Conv2d(cin, cout, 1, bias=False).to(memory_format=torch.channels_last).train()
    x, dy = layer_tensors((batch, cin, side, side), (batch, cout, side, side), dtype)
    times = interleaved({"conv": training_call(conv, conv, x, dy),
                         "matmul": training_call(lambda t: conv1x1_as_matmul(conv, t), conv, x, dy)}, warmup=1, reps=reps)
    return statistics.median(times["conv"]), statistics.median(times["matmul"])


def main():
    args = layer_arguments(__doc__)
    rows = []
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for cin, cout, side in SHAPES:
            conv_s, matmul_s = time_layer(cin, cout, side, dtype, args.batch, args.reps)
            row = {"dtype": name, "shape": [args.batch, cin, side, side], "out_channels": cout,
                   "conv_ms": conv_s * 1e3, "matmul_ms": matmul_s * 1e3, "speedup": conv_s / matmul_s}
            rows.append(row)
            print(f"{row['dtype']:>9} {cin:>5}->{cout:<5} {side:>3}x{side:<3} conv {row['conv_ms']:8.2f} ms  "
                  f"matmul {row['matmul_ms']:8.2f} ms  {row['speedup']:5.2f}x", flush=True)
        mine = [r for r in rows if r["dtype"] == name]
        print(f"{name:>9} all shapes: conv {sum(r['conv_ms'] for r in mine):.1f} ms, "
              f"matmul {sum(r['matmul_ms'] for r in mine):.1f} ms", flush=True)
    save_rows(args.json, args.batch, rows)


if __name__ == "__main__":
    main()
