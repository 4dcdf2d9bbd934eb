"""Training steps with the heap held (engine/heap.py: glibc takes every block from its heap and
keeps what is freed, as `resnetlab train` does on the CPU) against glibc's default (blocks above
its mmap threshold mapped afresh and unmapped when freed, the heap's top handed back), each in a
spawned process of its own (the setting is process-wide and changes where later blocks go, so
one process cannot switch it per step). The two processes step in turn, one untimed step right
before each timed one, the order alternating by round, so a drift in the machine's speed hits
both alike. Per timed step: seconds, page faults, kernel time; per process: peak RSS.

    python benchmarks/host_memory_ab.py --model resnet50 --rounds 12 --json benchmarks/results/xeon_icelake/host_memory_ab_resnet50.json
    python benchmarks/host_memory_ab.py --model resnet20 --rounds 30 --json benchmarks/results/xeon_icelake/host_memory_ab_resnet20.json

With --pages, the held heap backed by 2 MiB pages after the first step (engine/heap.huge_pages, as
the training loop does) against the held heap alone:

    python benchmarks/host_memory_ab.py --pages --precision bf16 --model resnet20 --rounds 30 --json benchmarks/results/amx_xeon/huge_pages_ab_resnet20.json

(Its first form, of 2026-12-02, switched a 1 GiB mmap threshold between the steps of one process;
benchmarks/results/amx_xeon/host_memory_ab_*.json are from that form: see benchmarks/README.md.)
"""
import argparse
import multiprocessing
import resource
import statistics
import time

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import round_order

# (new arm, old arm) of each comparison
ARMS = {"heap": ("held", "default"), "pages": ("huge", "held")}


def serve(conn, arm: str, model: str, precision: str, batch: int, size: int) -> None:
    """One arm's process: build the training step, then one untimed + one timed step per request."""
    from resnetlab.bench.measure import bench_step_parts
    from resnetlab.engine.heap import hold_heap, huge_pages
    from resnetlab.engine.runtime import Runtime, prepare_model
    from resnetlab.engine.train import train_step
    from resnetlab.models import create_model

    if arm in ("held", "huge") and not hold_heap():
        conn.send(RuntimeError("this C library is not glibc: nothing to compare"))
        return
    torch.manual_seed(0)
    rt = Runtime(torch.device("cpu"), precision, True, fused_bn=True)  # the kernels of a training run
    parts = bench_step_parts(prepare_model(create_model(model, num_classes=10).train(), rt), rt)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    train_step(parts, x, y)
    if arm == "huge" and not huge_pages():
        conn.send(RuntimeError("the kernel backed no part of the heap with huge pages: nothing to compare"))
        return
    conn.send("ready")
    while conn.recv() == "step":
        train_step(parts, x, y)  # untimed: as a training loop, the step before left the heap as it leaves it
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train_step(parts, x, y)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        conn.send((seconds, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime))
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux: KiB)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--pages", action="store_true", help="the held heap with and without huge pages")
    parser.add_argument("--json")
    args = parser.parse_args()
    arms = ARMS["pages" if args.pages else "heap"]
    new, old = arms
    batch, size = (32, 224) if args.model == "resnet50" else (128, 32)
    context = multiprocessing.get_context("spawn")
    pipes, processes = {}, []
    try:
        for arm in arms:  # built one after the other: a first step is not timed against another's
            mine, theirs = context.Pipe()
            process = context.Process(target=serve, args=(theirs, arm, args.model, args.precision, batch, size))
            process.start()
            processes.append(process)
            if isinstance(reply := mine.recv(), Exception):
                raise SystemExit(str(reply))
            pipes[arm] = mine
        steps = {arm: [] for arm in arms}
        for r in range(args.rounds):
            for arm in round_order(list(arms), r):
                pipes[arm].send("step")
                steps[arm].append(pipes[arm].recv())
            a, b = steps[new][-1][0], steps[old][-1][0]
            print(f"round {r}: {new} {a * 1e3:7.0f} ms  {old} {b * 1e3:7.0f} ms  {b / a:.3f}x", flush=True)
        peak = {}
        for arm in arms:
            pipes[arm].send("stop")
            peak[arm] = pipes[arm].recv()
    finally:
        for process in processes:
            process.join(timeout=60)
            process.kill()
    ratios = [d[0] / h[0] for d, h in zip(steps[old], steps[new])]
    result = {"machine": describe_machine("cpu"), "model": args.model, "precision": args.precision,
              "channels_last": True, "fused_bn": True, "batch_size": batch, "rounds": args.rounds,
              "seconds": {arm: [s[0] for s in steps[arm]] for arm in arms},
              "faults": {arm: [s[1] for s in steps[arm]] for arm in arms},
              "kernel_s": {arm: [s[2] for s in steps[arm]] for arm in arms},
              "peak_rss_mib": peak,
              f"{old}_over_{new}_per_round": [min(ratios), statistics.median(ratios), max(ratios)],
              f"{new}_faster_rounds": sum(r > 1 for r in ratios)}
    for arm in arms:
        print(f"{arm:>8}: {1e3 * statistics.median(s[0] for s in steps[arm]):7.0f} ms a step, "
              f"{statistics.median(s[1] for s in steps[arm]):8.0f} page faults, "
              f"{1e3 * statistics.median(s[2] for s in steps[arm]):5.0f} ms in the kernel, "
              f"peak RSS {peak[arm]:.0f} MiB")
    print(f"{old} / {new}, per round: median {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}x), "
          f"{new} faster in {result[f'{new}_faster_rounds']} of {args.rounds}")
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":  # the guard matters: each arm runs in a spawned process that imports this file
    main()
