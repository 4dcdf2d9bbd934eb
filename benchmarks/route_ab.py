"""Training steps with one of the blocks' routes on against off, in one process: two copies of the
same model, the route switched off for each step of the "off" copy, each timed step right after an
untimed one of the same arm, the order alternating by round, so a drift in the machine's speed
hits both alike. The routes (the per-layer figures are the named scripts'; this is the whole step):

    strided    the wide stride-2 convolutions' matrix-product gradients (models/strided_conv.py)
               against oneDNN's convolution for them (benchmarks/strided_layers.py)
    pointwise  the bottlenecks' 1x1 stride-1 convolutions as matrix products (blocks.pointwise)
               against oneDNN's convolution (benchmarks/pointwise_layers.py)
    pointwise-shortcut
               an identity bottleneck's first 1x1 convolution and its shortcut as one node, the
               shortcut's gradient added inside the input gradient's matrix product
               (models/pointwise.pointwise_and_shortcut), against autograd adding the two; bf16
    pair       a projection block's end, relu(bn(a) + shortcut_bn(b)), as one fused kernel pair
               against the shortcut's batch-norm as its module (fused_bn.bn_relu_projected;
               benchmarks/fused_bn_layers.py --pair)
    wgrad      the 3x3 stride-1 convolutions' weight gradients in resnetlab's kernel (AMX, or
               AVX-512 BF16 up to 64 channels; models/conv_wgrad.py) against oneDNN's
               (benchmarks/conv_wgrad_layers.py); bf16 only
    wgrad-shortcut
               a basic block's first 3x3 convolution (with resnetlab's weight gradient) and its
               identity shortcut as one node, oneDNN adding the shortcut's gradient as it writes the
               input gradient (conv_wgrad.conv3x3_own_wgrad_and_shortcut), against autograd adding
               the two; bf16 only
    entry-shortcut
               a stage entry's first convolution and its option-A shortcut as one node, the shortcut's
               gradient added into the input gradient at every second pixel in place
               (shortcuts.conv_and_zero_pad), against autograd's zero-filled gradient and addition
               (the CIFAR ResNets; fp32 or bf16)
    row-passes
               the fused batch-norm's passes written for channels_last rows with AVX-512 (channels a
               multiple of 16; the reductions' sums in registers; fused_bn_rows.h) against the
               general passes (fused_bn_passes.h), a switch of the built kernels
    direct     the 3x3 convolutions of resnetlab's direct kernels (the narrow stride-1 ones and the
               stride-2 stage entries, forward pass and both gradients; AVX-512; models/conv_direct.py)
               against oneDNN's (benchmarks/direct_conv_layers.py); fp32 only
    direct-s2  the same with only its stride-2 convolutions switched (the stride-1 ones take the
               kernels in both arms)
    shortcut   a basic block's first convolution and its parameter-free shortcut as one node of the
               direct kernels, the shortcut's gradient added inside the input-gradient kernel
               (conv_direct.conv3x3_direct_and_shortcut), against the same kernels with autograd
               adding the two gradients (and option A's zero-filled one) afterwards; fp32 only
    bn-conv    conv(relu(bn(x))) as one node, the kernels applying batch-norm and ReLU as they read x
               (models/bn_relu_conv.py), against fused batch-norm + ReLU writing its output for the
               same kernels to read; fp32 only
    first-layer the CIFAR ResNets' first convolution (3 -> 16) in the direct kernel's forward pass
               (conv_direct.FIRST_LAYERS) against oneDNN's; fp32 only

    python benchmarks/route_ab.py --route strided --rounds 12 --json benchmarks/results/amx_xeon/strided_ab_resnet50.json
    python benchmarks/route_ab.py --route pointwise-shortcut --rounds 12 --json benchmarks/results/amx_xeon/pointwise_shortcut_ab_resnet50.json
    python benchmarks/route_ab.py --route pair --rounds 12 --json benchmarks/results/amd_epyc_avx512/pair_ab_resnet50.json
    python benchmarks/route_ab.py --route wgrad --model resnet20 --batch 256 --size 32 --rounds 12
    python benchmarks/route_ab.py --route wgrad-shortcut --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route entry-shortcut --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route row-passes --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route direct --model resnet20 --batch 128 --size 32 --rounds 20
    python benchmarks/route_ab.py --route direct-s2 --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route shortcut --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route bn-conv --model resnet20 --batch 128 --size 32 --rounds 30
    python benchmarks/route_ab.py --route first-layer --model resnet20 --batch 128 --size 32 --rounds 30
"""
import argparse
import copy
import statistics
import time
from contextlib import contextmanager

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.measure import bench_step_parts
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import round_order
from resnetlab.engine.heap import hold_heap, huge_pages
from resnetlab.engine.runtime import Runtime, prepare_model, resolve_precision
from resnetlab.engine.train import train_step
from resnetlab.models import blocks, conv_direct, conv_wgrad, create_model, fused_bn
from resnetlab.models.conv_direct import conv3x3_direct, conv3x3_direct_and_shortcut
from resnetlab.models.fused_bn import bn_relu

# Each route's functions in models/blocks.py and what stands for each when the route is off.
SEPARATE_SHORTCUT = ("conv3x3_direct_and_shortcut", lambda conv, x, cout: (blocks.conv3x3_direct(conv, x), None))
# bn_relu_conv3x3 is only called where the fused batch-norm applies, so bn_relu takes it (relu unused)
SEPARATE_BN = ("bn_relu_conv3x3", lambda bn, conv, x: blocks.conv3x3_direct(conv, bn_relu(bn, x, None, fused=True)))
OFF = {
    "strided": [("strided_conv", lambda conv, x: conv(x))],
    "pointwise": [("pointwise", lambda conv, x: conv(x)), ("pointwise_and_shortcut", lambda conv, x: (conv(x), None))],
    "pointwise-shortcut": [("pointwise_and_shortcut", lambda conv, x: (blocks.pointwise(conv, x), None))],
    "pair": [("bn_relu_projected", lambda bn, x, relu, shortcut_bn, shortcut, fused=False:
              bn_relu(bn, x, relu, shortcut_bn(shortcut), fused=fused))],
    "wgrad": [("conv3x3_own_wgrad", lambda conv, x, own_kernels: conv(x))],
    "wgrad-shortcut": [("conv3x3_own_wgrad_and_shortcut",
                        lambda conv, x: (blocks.conv3x3_own_wgrad(conv, x, True), None))],
    "entry-shortcut": [("conv_and_zero_pad", lambda conv, x, cout: (blocks.convolve(conv, x, True), None))],
    "direct": [("conv3x3_direct", lambda conv, x: conv(x)), SEPARATE_SHORTCUT, SEPARATE_BN],
    "direct-s2": [("conv3x3_direct", lambda conv, x: conv(x) if conv.stride != (1, 1) else conv3x3_direct(conv, x)),
                  ("conv3x3_direct_and_shortcut", lambda conv, x, cout: (conv(x), None) if conv.stride != (1, 1)
                   else conv3x3_direct_and_shortcut(conv, x, cout))],
    "shortcut": [SEPARATE_SHORTCUT],
    "bn-conv": [SEPARATE_BN],
    "first-layer": [("conv3x3_direct", lambda conv, x: conv(x) if conv.in_channels == 3 else conv3x3_direct(conv, x))],
}
# The routes of resnetlab's own kernels: the precision each runs in, and its module.
KERNEL_ROUTES = {"wgrad": ("bf16", conv_wgrad), "wgrad-shortcut": ("bf16", conv_wgrad), "direct": ("fp32", conv_direct),
                 "direct-s2": ("fp32", conv_direct),
                 "shortcut": ("fp32", conv_direct), "bn-conv": ("fp32", conv_direct), "first-layer": ("fp32", conv_direct)}


# Routes that are a switch of a built kernel rather than functions of models/blocks.py.
SWITCHES = {"row-passes": lambda on: fused_bn.EXTENSION.get().use_row_passes(on)}


@contextmanager
def route(name: str, on: bool):
    """The route's functions in models/blocks.py, or (off) the plain paths they replace."""
    if name in SWITCHES:
        SWITCHES[name](on)
        try:
            yield
        finally:
            SWITCHES[name](True)
        return
    kept = {attribute: getattr(blocks, attribute) for attribute, _ in OFF[name]}
    if not on:
        for attribute, off in OFF[name]:
            setattr(blocks, attribute, off)
    try:
        yield
    finally:
        for attribute, function in kept.items():
            setattr(blocks, attribute, function)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=sorted([*OFF, *SWITCHES]), required=True)
    parser.add_argument("--model", default="resnet50",
                        help="strided and pair need projection shortcuts (strided: 512+ channels); any ResNet for the others")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: what training's auto picks on this CPU (bf16 with AMX or AMD's AVX-512 BF16, else fp32)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", help="write the rounds here")
    args = parser.parse_args()
    torch.manual_seed(0)
    hold_heap()  # both arms' steps reuse freed memory, as `resnetlab train` does (engine/heap.py)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    if args.route in KERNEL_ROUTES:
        needed, kernels = KERNEL_ROUTES[args.route]
        if precision != needed or not kernels.available():
            raise SystemExit(f"--route {args.route} needs {needed} and the kernel (here: {precision}, kernel "
                             f"{kernels.kernel_kind() or 'not meant for this CPU'}): both arms would be the same")
    if args.route == "row-passes" and not getattr(fused_bn.EXTENSION.get(), "row_passes_built", False):
        raise SystemExit("--route row-passes needs the fused batch-norm kernels built with AVX-512")
    rt = Runtime(torch.device("cpu"), precision, True, fused_bn=True)
    base = create_model(args.model, num_classes=10).train()
    parts = {}
    for arm in ("on", "off"):
        parts[arm] = bench_step_parts(prepare_model(copy.deepcopy(base), rt), rt)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))

    def step(arm: str) -> float:
        with route(args.route, arm == "on"):
            start = time.perf_counter()
            train_step(parts[arm], x, y)
            return time.perf_counter() - start
    for arm in ("on", "off"):
        step(arm)  # first steps: allocations, oneDNN's primitive caches
    huge_pages()  # as the training loop does once the heap has grown (engine/heap.py)
    rounds = []
    for r in range(args.rounds):
        seconds = {}
        for arm in round_order(["on", "off"], r):
            step(arm)  # untimed, as the harness's settle call
            seconds[arm] = step(arm)
        rounds.append({"on_s": seconds["on"], "off_s": seconds["off"], "speedup": seconds["off"] / seconds["on"]})
        print(f"round {r}: on {seconds['on'] * 1e3:7.0f} ms  off {seconds['off'] * 1e3:7.0f} ms  "
              f"{rounds[-1]['speedup']:.3f}x", flush=True)
    ratios = [r["speedup"] for r in rounds]
    on, off = statistics.median(r["on_s"] for r in rounds), statistics.median(r["off_s"] for r in rounds)
    print(f"{args.model} {precision} channels_last, batch {args.batch}, {args.size} px; median step: on {on * 1e3:.0f} ms, off {off * 1e3:.0f} ms ({off / on:.3f}x); per round "
          f"{min(ratios):.3f}-{max(ratios):.3f}x, median {statistics.median(ratios):.3f}x")
    if args.json:
        write_json({"machine": describe_machine(), "route": args.route, "model": args.model, "batch": args.batch,
                    "size": args.size, "precision": precision, "channels_last": True, "rounds": rounds,
                    "median_on_s": on, "median_off_s": off, "speedup_per_round_median": statistics.median(ratios)},
                   args.json)


if __name__ == "__main__":
    main()
