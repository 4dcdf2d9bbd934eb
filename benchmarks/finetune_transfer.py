"""Does pretraining help when there are few labelled images? Fine-tuning vs scratch vs linear probe.

Pretrain a ResNet-20 on 5 CIFAR-10 classes (2000 training images each by default), then learn
the other 5 classes from SHOTS images each, three ways, all through the public CLI:
  scratch      random init, the same recipe and steps as fine-tuning
  finetune     --init from the pretrained checkpoint, every layer trained, new classifier
               (also with finetune.backbone_lr_mult=0.1: the backbone learns 10x slower)
  linear probe --init, finetune.linear_probe=true (frozen features, logistic regression)
Test accuracy is on the first 300 test images of each target class (--test-images). The class folders are
symlinked into a temporary directory (the data is never copied). Writes JSON to
benchmarks/results/ and the results table into docs/finetune.md (between the results markers).

    nice -n 19 python benchmarks/finetune_transfer.py            # ~10-15 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from resnetlab.bench.run import write_json
from resnetlab.bench.timing import stopwatch
from resnetlab.cli import main as cli
from resnetlab.cpu import cpu_info
from resnetlab.engine.checkpoint import load_checkpoint
from resnetlab.engine.run_records import RunSummary

DATA = Path("/work/shared/data/cifar10-jpeg")
SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "finetune.md"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
COMMON = ["--set", "data.val_size=0", "--set", "train.log_every=1000"]


def link_subset(data: Path, out: Path, classes, n_train: int, n_test: int) -> Path:
    """out/{train,test}/<class>/: symlinks to the first n_train / n_test images of each class."""
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            src, dst = data / split / cls, out / split / cls
            dst.mkdir(parents=True)
            for name in sorted(os.listdir(src))[:n]:
                (dst / name).symlink_to(src / name)
    return out


def train(args: list[str], out: Path) -> dict:
    print(f"[finetune_transfer] {out.name}: resnetlab train {' '.join(args)}", file=sys.stderr, flush=True)
    with stopwatch() as wall:
        code = cli(["train", *args, "--out", str(out), *COMMON])
    if code != 0:
        raise SystemExit(f"resnetlab train {' '.join(args)} failed with exit code {code}")
    summary = RunSummary.read(out)
    return {"test_top1": summary.test_top1("last"), "wall_s": round(wall.s, 1)}


def provenance(ckpt_path: str) -> dict:
    """What the pretrained checkpoint is: classes, images, steps done out of how many epochs."""
    ckpt = load_checkpoint(ckpt_path)
    artifact, training = ckpt.artifact, ckpt.training
    if list(artifact.classes) != list(SOURCE):
        raise SystemExit(f"{ckpt_path} was trained on {artifact.classes}, not the source classes {SOURCE}")
    return {"checkpoint": ckpt_path, "classes": list(artifact.classes), "model": artifact.model_name,
            "step": training.step, "epoch": training.epoch, "planned_epochs": artifact.config["schedule"]["epochs"],
            "train_err_last_epoch": training.last_metrics.train_err, "data_root": artifact.data_config()["root"]}


# cifar10_fast as it was when the figures in docs/finetune.md were measured: every epoch at full size,
# the centre test view (the recipe trains its first epochs on smaller crops since 2026-12-02).
FULL_SIZE = ["--set", "data.progressive_scales=[]", "--set", "train.test_protocol=center"]


def few_shot_args(data: Path, a) -> list[str]:
    """The recipe shared by scratch and fine-tuning: only --init differs."""
    return ["--recipe", "cifar10_fast", "--data", str(data), "--epochs", str(a.epochs), "--batch-size", "50",
            "--lr", str(a.lr), "--set", "schedule.warmup_steps=20", "--set", "schedule.warmup_lr=0.01", *FULL_SIZE]


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def run_all(a, tmp: Path) -> dict:
    target = link_subset(DATA, tmp / "target", TARGET, a.shots, a.test_images)
    if a.init:
        init, pre = a.init, {}
    else:
        source = link_subset(DATA, tmp / "source", SOURCE, a.pretrain_images, a.test_images)
        pre = train(["--recipe", "cifar10_fast", "--data", str(source), "--epochs", str(a.pretrain_epochs),
                     "--set", "schedule.warmup_steps=60", *FULL_SIZE], tmp / "pretrain")
        init = str(tmp / "pretrain" / "checkpoints" / "last.pt")
        if a.save_pretrained:  # the temporary directory goes away; keep the net for --init reruns
            shutil.copyfile(init, a.save_pretrained)
    results = {"pretrain": {**pre, **provenance(init)}}
    scratch, finetune, slow = [], [], []
    for seed in range(a.seeds):
        base = few_shot_args(target, a) + ["--seed", str(seed)]
        scratch.append(train(base, tmp / f"scratch{seed}")["test_top1"])
        finetune.append(train(base + ["--init", init], tmp / f"finetune{seed}")["test_top1"])
        slow.append(train(base + ["--init", init, "--set", "finetune.backbone_lr_mult=0.1"],
                          tmp / f"finetune_slow{seed}")["test_top1"])
    probe = train(["--recipe", "cifar10_fast", "--data", str(target), "--init", init,
                   "--set", "finetune.linear_probe=true", "--set", "train.test_protocol=center"], tmp / "probe")
    results.update(scratch=mean_std(scratch), finetune=mean_std(finetune), finetune_backbone_lr_x0_1=mean_std(slow),
                   linear_probe=probe)
    return results


def table(r: dict, a) -> str:
    fmt = lambda s: f"{s['mean']:.1f} ± {s['std']:.1f}"  # noqa: E731
    return "\n".join([
        f"Target: {', '.join(TARGET)}, {a.shots} training images per class ({5 * a.shots} in all); "
        f"test: the first {a.test_images} CIFAR-10 test images of each. {pretrain_line(r['pretrain'], a)}",
        "",
        "| method | test top-1 (%) | runs |",
        "|---|---|---|",
        f"| from scratch ({a.epochs} epochs) | {fmt(r['scratch'])} | {a.seeds} seeds |",
        f"| fine-tune all layers from the pretrained net ({a.epochs} epochs) | {fmt(r['finetune'])} | {a.seeds} seeds |",
        f"| fine-tune, backbone at 0.1 x lr ({a.epochs} epochs) | {fmt(r['finetune_backbone_lr_x0_1'])} | {a.seeds} seeds |",
        f"| linear probe on the pretrained features | {r['linear_probe']['test_top1']:.1f} | 1 (deterministic) |",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}; date {r['date']}; total wall time {r['wall_s'] / 60:.1f} min "
        "(run at nice 19 beside other jobs: not a timing measurement).",
    ])


def pretrain_line(p: dict, a) -> str:
    done = f"{p['epoch']} of {p['planned_epochs']} planned epochs ({p['step']} steps)"
    line = f"Pretrained net: {p['model']} on {', '.join(p['classes'])}, {done}, last-epoch train error {p['train_err_last_epoch']:.1f}%"
    if "test_top1" in p:
        return line + f", test accuracy {p['test_top1']:.1f}% on those classes."
    return line + f" (given with --init: {p['checkpoint']})."


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    start, end = doc.index(MARKERS[0]) + len(MARKERS[0]), doc.index(MARKERS[1])
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, default=50, help="training images per target class")
    p.add_argument("--init", help="use this checkpoint (trained on the 5 source classes) instead of pretraining")
    p.add_argument("--save-pretrained", metavar="FILE", help="copy the pretrained checkpoint here")
    p.add_argument("--pretrain-images", type=int, default=2000, help="training images per source class")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15, help="few-shot training epochs (scratch and fine-tune)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--test-images", type=int, default=300, help="test images per class (CIFAR-10 has 1000)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"finetune_transfer_{datetime.date.today()}.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    # One thread: on a shared, busy CPU every multi-threaded op waits for its slowest (descheduled)
    # thread -- measured 49 vs 19 img/s for ResNet-20 training at nice 19 beside other jobs.
    torch.set_num_threads(a.threads)
    if not DATA.is_dir():
        print(f"{DATA} not found: this benchmark needs CIFAR-10 as JPEG folders", file=sys.stderr)
        return 2
    with stopwatch() as wall, tempfile.TemporaryDirectory(prefix="finetune_transfer_") as tmp:
        results = run_all(a, Path(tmp))
    results.update(
        args=vars(a), wall_s=round(wall.s, 1),
        command="nice -n 19 python benchmarks/finetune_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=f"{cpu_info()[0]}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    write_json(results, a.out)
    write_doc(table(results, a))
    print(table(results, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
