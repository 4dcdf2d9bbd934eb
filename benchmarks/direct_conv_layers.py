"""resnetlab's fp32 direct 3x3 convolution kernels (models/conv_direct.cpp, which fp32 training takes
on AVX-512 CPUs for the widths in conv_direct.WIDTHS and the stride-2 layers in conv_direct.STRIDED)
against oneDNN's: forward pass, input gradient and, where the kernels have it, weight gradient; at
ResNet-20's 3x3 shapes (batch 128: the stride-1 layers, the two stride-2 stage entries, and the
first layer, 3 -> 16 channels, whose forward pass alone the kernel takes) and ResNet-50's
64-channel one (batch 32, 56 px), channels_last, timed alternately in one process so that a busy
machine slows both alike; each result held to an fp64 reference. Needs a CPU with AVX-512 and a
C++ compiler.

    python benchmarks/direct_conv_layers.py
    python benchmarks/direct_conv_layers.py --json benchmarks/results/xeon_icelake/direct-stride2-2026-12-04/direct_conv_layers.json

The input gradient of a stride-1, padding-1 3x3 convolution is the same convolution of the output
gradient with the weights' two channel axes swapped and both spatial axes flipped; the kernel
computes it that way (conv_direct.packed_for_input_grad). At stride 2 it is computed per output
parity (conv_direct_stride2.h).
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import interleaved
from resnetlab.models import conv_direct
from resnetlab.models.conv_direct import onednn_grad, packed, packed_for_input_grad, packed_for_strided_input_grad

# (batch, channels in, channels out, input side, stride): ResNet-20's 3x3 layers, and ResNet-50's
# first-stage one
SHAPES = [(128, 16, 16, 32, 1), (128, 32, 32, 16, 1), (128, 64, 64, 8, 1), (32, 64, 64, 56, 1),
          (128, 16, 32, 32, 2), (128, 32, 64, 16, 2), (128, 3, 16, 32, 1)]
PASSES = ("forward", "input_grad", "weight_grad")


def rel_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got.double() - reference).abs().max() / reference.abs().max()).item()


def time_layer(kernel, batch: int, cin: int, cout: int, side: int, stride: int, reps: int) -> dict:
    """Each pass's time by oneDNN and by the kernel (the weight gradient where it has one) and the
    kernel's largest error relative to fp64."""
    def cl(*shape):
        return torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    out = side // stride
    x, dy, weight = cl(batch, cin, side, side), cl(batch, cout, out, out), cl(cout, cin, 3, 3)
    forward_w = packed(weight)
    if stride == 1:
        input_grad_w = packed_for_input_grad(weight)
        kernel_input_grad = lambda: kernel.conv3x3(dy, input_grad_w)  # noqa: E731
    else:
        input_grad_w = packed_for_strided_input_grad(weight)
        kernel_input_grad = lambda: kernel.conv3x3_input_grad_s2(dy, input_grad_w)  # noqa: E731
    x64, dy64, weight64 = x.double(), dy.double(), weight.double()
    passes = {"forward": (lambda: F.conv2d(x, weight, None, stride, 1), lambda: kernel.conv3x3(x, forward_w, stride),
                          lambda: F.conv2d(x64, weight64, None, stride, 1)),
              "input_grad": (lambda: onednn_grad(dy, x, weight, stride, 0), kernel_input_grad,
                             lambda: onednn_grad(dy64, x64, weight64, stride, 0))}
    first_layer = (cin, cout) in conv_direct.FIRST_LAYERS  # the forward pass only: its gradients are oneDNN's
    if first_layer:
        del passes["input_grad"]
    used = first_layer or (cin == cout in conv_direct.WIDTHS if stride == 1 else (cin, cout) in conv_direct.STRIDED)
    if used and not first_layer:
        passes["weight_grad"] = (lambda: onednn_grad(dy, x, weight, stride, 1),
                                 lambda: kernel.conv3x3_weight_grad(x, dy, stride),
                                 lambda: onednn_grad(dy64, x64, weight64, stride, 1))
    errors = {name: rel_error(ours(), reference()) for name, (_, ours, reference) in passes.items()}
    calls = {}
    for name, (onednn, ours, _) in passes.items():
        calls[f"onednn_{name}"], calls[f"kernel_{name}"] = onednn, ours
    ms = {name: statistics.median(t) * 1e3 for name, t in interleaved(calls, warmup=2, reps=reps).items()}
    macs = batch * cin * cout * 9 * out * out
    return {"shape": [batch, cin, side, side], "out_channels": cout, "stride": stride,
            **{f"{k}_ms": v for k, v in ms.items()}, **{f"{k}_gmacs": macs / v / 1e6 for k, v in ms.items()},
            **{f"{name}_speedup": ms[f"onednn_{name}"] / ms[f"kernel_{name}"] for name in passes},
            **{f"{name}_rel_error": error for name, error in errors.items()},
            "max_rel_error": max(errors.values()), "used_in_training": used}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    kernel = conv_direct.KERNELS.get()
    if kernel is None or not kernel.built:
        raise SystemExit(f"needs a CPU with AVX-512 and the kernel built ({conv_direct.KERNELS.broken or 'no AVX-512 here'})")
    rows = []
    for batch, cin, cout, side, stride in SHAPES:
        row = time_layer(kernel, batch, cin, cout, side, stride, args.reps)
        rows.append(row)
        print(f"{batch:>4}x{cin:<3}{side:>3}x{side:<3}-> {cout:<3}s{stride}  " + "   ".join(
            f"{name}: oneDNN {row[f'onednn_{name}_gmacs']:6.1f}, kernel {row[f'kernel_{name}_gmacs']:6.1f} GMAC/s "
            f"({row[f'{name}_speedup']:4.2f}x)" for name in PASSES if f"{name}_speedup" in row)
              + f"   max rel. error {row['max_rel_error']:.1e}", flush=True)
    if args.json:
        write_json({"machine": describe_machine("cpu"), "threads": torch.get_num_threads(),
                    "kernel_meant_for_this_cpu": conv_direct.kernel_kind(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
