"""How the machine's matrix-multiply speed drifts over time: bf16 and fp32 2048^3 products, one of
each every few seconds, for a minute or more. On a VM the cores' neighbours can change it from one
minute to the next (on the AMX Xeon of the results of record, AMX more than the fp32 units),
which is why the harness times its variants round-robin (resnetlab/bench/processes.py).

    python benchmarks/peak_drift.py                                   # one minute
    python benchmarks/peak_drift.py --seconds 120 --json benchmarks/results/amx_xeon/peak_drift.json
"""
import argparse
import statistics
import time

from resnetlab.bench.machine import describe_machine, square_matmul
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import timed

N = 2048


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="how long to sample (default 60)")
    parser.add_argument("--every", type=float, default=2, help="seconds between samples (default 2)")
    parser.add_argument("--precisions", nargs="*", default=["bf16", "fp32"])
    parser.add_argument("--json", help="write the samples here")
    args = parser.parse_args()
    products = {p: square_matmul(p, N, "cpu") for p in args.precisions}
    for product in products.values():
        timed(product, 1, 1)  # thread pool, kernel choice
    samples = {p: [] for p in products}
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        line = []
        for p, product in products.items():
            ms = 1e3 * min(timed(product, 0, 2))  # the better of two back-to-back calls
            samples[p].append(ms)
            line.append(f"{p} {ms:7.1f} ms ({N**3 / ms / 1e6:6.0f} GMAC/s)")
        print("  ".join(line), flush=True)
        time.sleep(args.every)
    summary = {p: {"min_ms": min(v), "median_ms": statistics.median(v), "max_ms": max(v), "max_over_min": max(v) / min(v)}
               for p, v in samples.items()}
    for p, s in summary.items():
        print(f"{p}: {s['min_ms']:.1f}-{s['max_ms']:.1f} ms per {N}^3 product (median {s['median_ms']:.1f}; "
              f"slowest / fastest {s['max_over_min']:.2f})")
    if args.json:
        write_json({"machine": describe_machine("cpu"), "size": N, "seconds": args.seconds, "every_s": args.every,
                    "samples_ms": samples, "summary": summary}, args.json)


if __name__ == "__main__":
    main()
