"""Time to a top-1 target on CIFAR-10: our recipes against the paper's, run eagerly in fp32.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-jpeg              # ResNet-20 arms, 80%
    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-jpeg --arms paper-eager-fp32
    python benchmarks/time_to_accuracy.py --data DIR --target 94 --arms resnet18          # on a GPU

Arms:
- resnetlab: the cifar10_fast recipe with the automatic runtime (fp32 + channels_last on a CPU
  without AMX, bf16 where AMX makes it faster), batched tensor augmentation. Since 2026-12-02 the
  recipe trains its first epochs on smaller crops and reaches 80% on the test split with flip
  views; its validation (centre views) ends near 79%, so this arm stops at no 80% evaluation. The
  figures measured before (README) came from the full-size recipe: add
  --set 'data.progressive_scales=[]' --set train.test_protocol=center.
- paper-eager-fp32: the paper's recipe (batch 128, lr 0.1, momentum 0.9, wd 1e-4, the lr drops at
  32k/48k iterations) in eager fp32 NCHW. Its first --paper-steps iterations are the paper's
  schedule exactly (lr 0.1 throughout); the arm stops there if it has not reached the target.
- resnet18, resnet18-30ep, resnet18-10ep (for a GPU): the cifar10_resnet18 recipe (ResNet-18 with
  the CIFAR stem, batch 512, one-cycle) over 60, 30 or 10 epochs, automatic runtime.

Both arms evaluate once per epoch on the 5000 held-out training images and stop at the first
evaluation whose validation top-1 reaches --target (train.stop_at_val_top1). The result is the
run's elapsed time at that point (training and the evaluations before it), with the test top-1
of those weights beside it, and every evaluation's time and accuracy ("curve"). Writes
benchmarks/results/time_to_<target>.json (time_to_<target>_cuda.json on a GPU); run it on an idle machine.
"""
import argparse
import datetime
import json
from pathlib import Path

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import stopwatch
from resnetlab.config import apply_overrides, load_config, parse_override
from resnetlab.engine import train_and_evaluate
from resnetlab.engine.datadir import data_overrides
from resnetlab.engine.metrics_csv import read_jsonl

RESULTS = Path(__file__).parent / "results"
EAGER_FP32 = [("train.precision", "fp32"), ("train.channels_last", "false"), ("train.compile", "false")]
ARMS = {
    "resnetlab": ("cifar10_fast", []),
    "paper-eager-fp32": ("cifar10_resnet20", EAGER_FP32),
    # GPU arms: ResNet-18 with the CIFAR stem, automatic runtime (bf16 + channels_last on CUDA)
    "resnet18": ("cifar10_resnet18", []),
    "resnet18-10ep": ("cifar10_resnet18", [("schedule.epochs", 10), ("schedule.warmup_steps", 150)]),
    "resnet18-30ep": ("cifar10_resnet18", [("schedule.epochs", 30), ("schedule.warmup_steps", 440)]),
}


def run_arm(name: str, data: str, target: float, workdir: Path, paper_steps: int, extra=()) -> dict:
    recipe, overrides = ARMS[name]
    overrides = overrides + [parse_override(o) for o in extra]
    cfg = load_config(recipe)
    cfg = apply_overrides(cfg, data_overrides(data, cfg.data.dataset) + overrides +
                          [("train.stop_at_val_top1", target), ("train.eval_every", 0)])
    if name == "paper-eager-fp32":
        cfg = apply_overrides(cfg, [("schedule.max_steps", paper_steps)])
    with stopwatch() as wall:
        summary = train_and_evaluate(cfg, workdir / name)
    reached = summary.target["reached"]
    return {"arm": name, "recipe": recipe, "overrides": [list(o) for o in overrides],
            "reached": reached is not None, "steps": summary.steps,
            "time_to_target_s": reached["elapsed_s"] if reached else None,
            "val_top1_at_stop": reached["val_top1"] if reached else None,
            "test_top1_at_stop": summary.test_top1("last"),
            "elapsed_s": summary.elapsed_s, "wall_s_with_setup_and_test": wall.s,
            "run_dir": str(workdir / name), "curve": curve(workdir / name)}


def curve(run_dir: Path) -> list[dict]:
    """Every evaluation of the run: when (elapsed s, epoch) and how good (val top-1, train loss)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: getattr(r, k) for k in ("epoch", "elapsed_s", "val_top1", "train_loss", "images_per_s")} for r in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="cifar10-jpeg root (ROOT/train, ROOT/test) or a CIFAR-10 folder")
    parser.add_argument("--target", type=float, default=80.0, help="validation top-1 in percent")
    parser.add_argument("--arms", nargs="*", default=["resnetlab", "paper-eager-fp32"], choices=list(ARMS))
    parser.add_argument("--paper-steps", type=int, default=10000, help="cap on the paper arm's iterations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more config override for every arm (recorded in the result)")
    parser.add_argument("--workdir", default="runs/time_to_accuracy", help="run directories (fresh ones per call)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(args.workdir) / stamp
    rows = []
    for arm in args.arms:
        rows.append(run_arm(arm, args.data, args.target, workdir, args.paper_steps, args.set))
        print(json.dumps(rows[-1]), flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the arms' auto device ran
    result = {"date": datetime.date.today().isoformat(), "machine": describe_machine(device),  # torch version included
              "target_val_top1": args.target, "results": rows}
    suffix = "_cuda" if device.type == "cuda" else ""
    path = write_json(result, Path(args.out) / f"time_to_{args.target:g}{suffix}.json")
    for r in rows:
        when = f"{r['time_to_target_s'] / 60:.1f} min ({r['steps']} steps)" if r["reached"] else f"not reached in {r['steps']} steps"
        print(f"{r['arm']:<18} {when}; test top-1 at stop {r['test_top1_at_stop']:.2f}%")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
