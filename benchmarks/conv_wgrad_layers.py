"""The weight gradient of one 3x3 stride-1 convolution, bf16 channels_last: oneDNN's (what
nn.Conv2d's backward computes) against resnetlab's kernel (models/conv_wgrad.cpp, which bf16 CPU
training uses on AMX, and on AVX-512 BF16 up to 64 channels), at every such shape of ResNet-20
(batch 256, the cifar10_fast batch) and ResNet-50 (batch 32, 224 px), timed alternately in one
process so that a busy machine slows both alike. Needs a CPU with amx_bf16 or avx512_bf16; the
rows say which half of the kernel ran.

    python benchmarks/conv_wgrad_layers.py
    python benchmarks/conv_wgrad_layers.py --json benchmarks/results/amd_epyc_avx512/conv_wgrad_layers.json

With --input-grad, the other gradient of the same layers as an identity block's first convolution
needs it, summed with the shortcut's gradient: oneDNN's backward pass and then the addition (what
autograd does) against conv_wgrad.input_grad's one oneDNN call that adds as it writes (any CPU
where oneDNN runs bf16; elsewhere both are the same two calls).

    python benchmarks/conv_wgrad_layers.py --input-grad --json benchmarks/results/amx_xeon/input_grad_add_layers.json
"""
import argparse
import statistics

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import interleaved
from resnetlab.models import conv_wgrad

# (network, batch, channels, side): the stride-1 3x3 convolutions (channels in = out)
SHAPES = [("resnet20", 256, 16, 32), ("resnet20", 256, 32, 16), ("resnet20", 256, 64, 8),
          ("resnet50", 32, 64, 56), ("resnet50", 32, 128, 28), ("resnet50", 32, 256, 14), ("resnet50", 32, 512, 7)]


def time_layer(batch: int, channels: int, side: int, reps: int) -> tuple[float, float, float]:
    """(median seconds of oneDNN's weight gradient, of the kernel's, the kernel's max relative error
    against oneDNN's computed in fp64)."""
    def cl(*shape):
        return torch.randn(*shape).bfloat16().contiguous(memory_format=torch.channels_last)
    x, dy, weight = cl(batch, channels, side, side), cl(batch, channels, side, side), cl(channels, channels, 3, 3)

    def onednn(x=x, dy=dy, weight=weight):
        return torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]
    kernel = conv_wgrad.KERNELS.get()
    reference = onednn(x.double(), dy.double(), weight.double())
    error = ((kernel.conv3x3_weight_grad(x, dy).double() - reference).abs().max() / reference.abs().max()).item()
    times = interleaved({"onednn": onednn, "kernel": lambda: kernel.conv3x3_weight_grad(x, dy)}, warmup=2, reps=reps)
    return statistics.median(times["onednn"]), statistics.median(times["kernel"]), error


def time_input_grad(batch: int, channels: int, side: int, reps: int) -> tuple[float, float, float]:
    """(median seconds of oneDNN's input gradient + the addition, of conv_wgrad.input_grad adding
    as it writes, the latter's max relative error against the sum computed in fp64)."""
    def cl(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).bfloat16().contiguous(memory_format=torch.channels_last)
    x, dy, add = cl(batch, channels, side, side), cl(batch, channels, side, side), cl(batch, channels, side, side)
    weight = cl(channels, channels, 3, 3, scale=0.1)

    def separate():
        return torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [True, False, False])[0] + add
    reference = add.double() + torch.nn.functional.conv_transpose2d(dy.double(), weight.double(), padding=1)
    error = ((conv_wgrad.input_grad(dy, x, weight, add.clone()).double() - reference).abs().max()
             / reference.abs().max()).item()
    target = add.clone()  # summed into over and over while timed: the same work each call
    times = interleaved({"separate": separate, "fused": lambda: conv_wgrad.input_grad(dy, x, weight, target)},
                        warmup=2, reps=reps)
    return statistics.median(times["separate"]), statistics.median(times["fused"]), error


def main_input_grad(args) -> None:
    rows = []
    for network, batch, channels, side in SHAPES:
        separate_s, fused_s, error = time_input_grad(batch, channels, side, args.reps)
        row = {"network": network, "shape": [batch, channels, side, side], "separate_ms": separate_s * 1e3,
               "fused_ms": fused_s * 1e3, "speedup": separate_s / fused_s, "max_rel_error": error,
               "added_as_written": conv_wgrad._fused_addition() and channels <= conv_wgrad.WIDEST_ADDED_AS_WRITTEN}
        rows.append(row)
        print(f"{network:>9} {batch:>4}x{channels:<4}{side:>3}x{side:<3} oneDNN dx + add {row['separate_ms']:7.2f} ms  "
              f"input_grad {row['fused_ms']:7.2f} ms  {row['speedup']:5.2f}x  (max rel. error {error:.1e})"
              f"{'' if row['added_as_written'] else '  (the same two calls)'}", flush=True)
    if args.json:
        write_json({"machine": describe_machine(), "rows": rows}, args.json)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--input-grad", action="store_true", help="the input gradient with a shortcut's added")
    args = parser.parse_args()
    if args.input_grad:
        return main_input_grad(args)
    if conv_wgrad.kernel_kind() is None or conv_wgrad.KERNELS.get() is None:
        raise SystemExit("needs a CPU with AMX or AVX-512 BF16 and the kernel built "
                         f"({conv_wgrad.KERNELS.broken or 'neither amx_bf16 nor avx512_bf16 here'})")
    kind = conv_wgrad.KERNELS.get().kind
    rows = []
    for network, batch, channels, side in SHAPES:
        onednn_s, kernel_s, error = time_layer(batch, channels, side, args.reps)
        row = {"network": network, "shape": [batch, channels, side, side], "kernel": kind, "onednn_ms": onednn_s * 1e3,
               "kernel_ms": kernel_s * 1e3, "speedup": onednn_s / kernel_s, "max_rel_error": error,
               "used_in_training": kind == "AMX" or channels <= conv_wgrad.WIDEST_AVX512}
        rows.append(row)
        print(f"{network:>9} {batch:>4}x{channels:<4}{side:>3}x{side:<3} oneDNN {row['onednn_ms']:7.2f} ms  "
              f"{kind} kernel {row['kernel_ms']:7.2f} ms  {row['speedup']:5.2f}x  (max rel. error {error:.1e})", flush=True)
    if args.json:
        write_json({"machine": describe_machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
