"""Does the fused batch-norm change what training reaches? Full `cifar10_fast` runs with the fused
kernels (the automatic runtime on a CPU) and with PyTorch's own modules (train.fused_bn=false),
several seeds each, in alternating order so that a change in the machine's load hits both arms.

    python benchmarks/fused_bn_accuracy.py --data ../shared/data/cifar10-jpeg --out benchmarks/results/amx_xeon
    python benchmarks/fused_bn_accuracy.py --data DIR --seeds 0 1 2 --workdir runs/fused_bn_accuracy
    # the recipe as it was until 2026-12-02 (7 epochs at full size, centre test view):
    python benchmarks/fused_bn_accuracy.py --data DIR --set 'data.progressive_scales=[]' --set train.test_protocol=center

A run whose directory already holds summary.json is read, not repeated, so an interrupted
comparison continues where it stopped. Writes OUT/fused_bn_accuracy.json: per run the test top-1
of the last and of the best-by-validation weights, the best validation top-1, the seconds in the
training loop and the wall time; per arm the mean and the sample standard deviation.
"""
import argparse
import datetime
import json
import statistics
from pathlib import Path

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import stopwatch
from resnetlab.config import apply_overrides, load_config, parse_override
from resnetlab.engine import train_and_evaluate
from resnetlab.engine.datadir import data_overrides

ARMS = {"fused": [("train.fused_bn", "auto")], "plain": [("train.fused_bn", "false")]}
RECIPE = "cifar10_fast"


def run_one(arm: str, seed: int, data: str, workdir: Path, overrides: list) -> dict:
    run_dir = workdir / f"{arm}-seed{seed}"
    wall = None
    if not (run_dir / "summary.json").is_file():
        cfg = load_config(RECIPE)
        cfg = apply_overrides(cfg, data_overrides(data, cfg.data.dataset) + overrides + ARMS[arm] + [("train.seed", seed)])
        with stopwatch() as t:
            train_and_evaluate(cfg, run_dir)
        wall = t.s
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"arm": arm, "seed": seed, "test_top1_last": summary["test"]["last"]["top1"],
            "test_top1_best": summary["test"]["best"]["top1"], "best_val_top1": 100 - summary["best_val_top1_err"],
            "loop_s": summary["elapsed_s"], "wall_s": wall, "run_dir": str(run_dir)}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 as ROOT/{train,test}/<class>/*.jpg (or a cifar10 root)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/fused_bn_accuracy", help="where the runs are written")
    parser.add_argument("--out", default="benchmarks/results", help="folder for fused_bn_accuracy.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every run")
    args = parser.parse_args()
    overrides = [parse_override(text) for text in args.set]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append(run_one(arm, seed, args.data, Path(args.workdir), overrides))
            print(json.dumps(rows[-1]), flush=True)
    arms = {arm: {key: spread([r[key] for r in rows if r["arm"] == arm])
                  for key in ("test_top1_last", "test_top1_best", "best_val_top1", "loop_s")} for arm in ARMS}
    for arm, s in arms.items():
        t = s["test_top1_last"]
        print(f"{arm:>6}: test top-1 {t['mean']:.2f} +- {t['std'] or 0:.2f} over seeds {args.seeds} "
              f"({', '.join(f'{v:.2f}' for v in t['values'])}); loop {s['loop_s']['mean']:.0f} s on average")
    result = {"recipe": RECIPE, "overrides": dict(overrides), "started": started, "machine": describe_machine(), "seeds": args.seeds,
              "arms": {arm: dict(ARMS[arm]) for arm in ARMS}, "summary": arms, "runs": rows}
    print("wrote", write_json(result, Path(args.out) / "fused_bn_accuracy.json"))


if __name__ == "__main__":
    main()
