"""One stride-2 convolution, forward + backward, as nn.Conv2d (oneDNN) against the same convolution
with matrix-product gradients (models/strided_conv.py, which bf16 training on the CPU uses for 512
and more input channels), at every stride-2 shape of a ResNet-50 after its stem (batch 32, 224 px),
channels_last, in bf16 (autocast) and fp32, timed alternately in one process so that a busy
machine slows both alike.

    python benchmarks/strided_layers.py
    python benchmarks/strided_layers.py --json benchmarks/results/amx_xeon/strided_layers.json
"""
import statistics

import torch
from torch import nn

from resnetlab.bench.layers import DTYPES, layer_arguments, layer_tensors, save_rows, training_call
from resnetlab.bench.timing import interleaved
from resnetlab.models.strided_conv import _StridedConv

# (input channels, output channels, kernel, input side): the 3x3 and the projection of the first
# bottleneck of stages 2, 3 and 4 (torchvision's "v1.5": the stride in the 3x3)
SHAPES = [(128, 128, 3, 56), (256, 512, 1, 56), (256, 256, 3, 28), (512, 1024, 1, 28), (512, 512, 3, 14),
          (1024, 2048, 1, 14)]


def time_layer(cin: int, cout: int, kernel: int, side: int, dtype: torch.dtype, batch: int, reps: int) -> dict:
    """Median seconds of forward + backward: the module, then the matrix-product gradients, in turn;
    and, the same way, of oneDNN's forward pass alone and its weight gradient alone (why the route)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2, bias=False).to(memory_format=torch.channels_last)
    conv.train()
    x, dy = layer_tensors((batch, cin, side, side), (batch, cout, side // 2, side // 2), dtype)
    matmul = training_call(lambda t: _StridedConv.apply(t, conv.weight.to(dtype), kernel), conv, x, dy)
    w, pad = conv.weight.detach().to(dtype), kernel // 2

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, None, 2, pad)

    def weight_grad():
        torch.ops.aten.convolution_backward(dy, x.detach(), w, None, [2, 2], [pad, pad], [1, 1], False, [0, 0], 1,
                                            [False, True, False])
    times = interleaved({"conv": training_call(conv, conv, x, dy), "matmul": matmul, "forward": forward,
                         "weight_grad": weight_grad}, warmup=1, reps=reps)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    args = layer_arguments(__doc__)
    rows = []
    for dtype in DTYPES:
        name = str(dtype).removeprefix("torch.")
        for cin, cout, kernel, side in SHAPES:
            t = time_layer(cin, cout, kernel, side, dtype, args.batch, args.reps)
            row = {"dtype": name, "shape": [args.batch, cin, side, side], "out_channels": cout, "kernel": kernel,
                   "conv_ms": t["conv"] * 1e3, "matmul_ms": t["matmul"] * 1e3, "speedup": t["conv"] / t["matmul"],
                   "onednn_forward_ms": t["forward"] * 1e3, "onednn_weight_grad_ms": t["weight_grad"] * 1e3}
            rows.append(row)
            print(f"{name:>9} {kernel}x{kernel} {cin:>5}->{cout:<5} {side:>3}x{side:<3} conv {row['conv_ms']:8.2f} ms  "
                  f"matmul gradients {row['matmul_ms']:8.2f} ms  {row['speedup']:5.2f}x   (oneDNN alone: forward "
                  f"{row['onednn_forward_ms']:.2f} ms, weight gradient {row['onednn_weight_grad_ms']:.2f} ms)",
                  flush=True)
    save_rows(args.json, args.batch, rows)


if __name__ == "__main__":
    main()
