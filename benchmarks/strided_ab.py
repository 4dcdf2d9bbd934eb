"""Training steps with the wide stride-2 convolutions' matrix-product gradients
(models/strided_conv.py) against oneDNN's convolution for them, in one process: two copies of the
same model, the route switched for each step of the "off" copy, each timed step right after an
untimed one of the same arm, the order alternating by round, so a drift in the machine's speed
hits both alike. The per-layer figures are benchmarks/strided_layers.py's; this is the whole step.

    python benchmarks/strided_ab.py --rounds 10
    python benchmarks/strided_ab.py --rounds 10 --json benchmarks/results/amx_xeon/strided_ab_resnet50.json
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
from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.engine.train import train_step
from resnetlab.models import blocks, create_model


@contextmanager
def route(on: bool):
    """blocks.convolve's stride-2 route: the matrix-product gradients, or the module itself."""
    kept = blocks.strided_conv
    if not on:
        blocks.strided_conv = lambda conv, x: conv(x)
    try:
        yield
    finally:
        blocks.strided_conv = kept


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="a bottleneck ResNet (the route needs 512+ channels)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", help="write the rounds here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rt = Runtime(torch.device("cpu"), "bf16", True, fused_bn=True)  # what training's auto is on AMX
    base = create_model(args.model, num_classes=10).train()
    parts = {}
    for arm in ("on", "off"):
        parts[arm] = bench_step_parts(prepare_model(copy.deepcopy(base), rt), rt)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))

    def step(arm: str) -> float:
        with route(arm == "on"):
            start = time.perf_counter()
            train_step(parts[arm], x, y)
            return time.perf_counter() - start
    for arm in ("on", "off"):
        step(arm)  # first steps: allocations, oneDNN's primitive caches
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
    print(f"median step: on {on * 1e3:.0f} ms, off {off * 1e3:.0f} ms ({off / on:.3f}x); per round "
          f"{min(ratios):.3f}-{max(ratios):.3f}x, median {statistics.median(ratios):.3f}x")
    if args.json:
        write_json({"machine": describe_machine(), "model": args.model, "batch": args.batch, "size": args.size,
                    "precision": "bf16", "channels_last": True, "rounds": rounds,
                    "median_on_s": on, "median_off_s": off, "speedup_per_round_median": statistics.median(ratios)},
                   args.json)


if __name__ == "__main__":
    main()
