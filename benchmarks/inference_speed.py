"""Inference throughput of the predict fast path: BN folding, channels_last, bf16 (CPU).

For each model, the same random batch through: the plain model (fp32, NCHW), the BN-folded model
in NCHW and channels_last, and the folded channels_last model under bf16 autocast. Timings are
the best of --reps interleaved runs (the machine may be shared), in images per second. With
--checkpoint and --images the top-1 agreement of each fast path with plain fp32 is measured on
real images through resnetlab.inference.predictor.top1_agreement.

    python benchmarks/inference_speed.py --threads 1 [--checkpoint RUN_DIR --images DIR]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from resnetlab.bench.run import write_json
from resnetlab.bench.timing import interleaved
from resnetlab.inference.inputs import collect_images
from resnetlab.inference.predictor import Predictor, top1_agreement
from resnetlab.models import create_model
from resnetlab.models.fuse import fuse_bn

ROOT = Path(__file__).resolve().parent.parent
CASES = (("resnet20", 32, 256), ("resnet50", 224, 16))


def variants(name: str):
    """label -> (model, channels_last, bf16)."""
    plain = create_model(name).eval()
    fused = fuse_bn(plain)
    fused_cl = fuse_bn(plain).to(memory_format=torch.channels_last)
    return {"plain fp32 NCHW": (plain, False, False), "folded fp32 NCHW": (fused, False, False),
            "folded fp32 channels_last": (fused_cl, True, False), "folded bf16 channels_last": (fused_cl, True, True)}


def forward(model, x: torch.Tensor, channels_last: bool, bf16: bool):
    """One inference call of a variant on x, as a function to time."""
    inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def call():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(inp)
    return call


def throughput(name: str, size: int, batch: int, reps: int) -> dict[str, float]:
    """Images/s of each variant, best of `reps` calls timed in turn (a busy moment hurts all alike);
    the warm-up call lets oneDNN pick and cache its kernels."""
    x = torch.randn(batch, 3, size, size)
    calls = {label: forward(model, x, cl, bf16) for label, (model, cl, bf16) in variants(name).items()}
    return {label: batch / min(s) for label, s in interleaved(calls, warmup=1, reps=reps).items()}


def agreement(checkpoint: str, images: list[str]) -> dict:
    paths = collect_images(images)
    return {p: top1_agreement(Predictor.from_checkpoint(checkpoint, device="cpu", precision=p), paths)
            for p in ("fp32", "bf16")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--checkpoint", help="run dir or checkpoint for the agreement check")
    p.add_argument("--images", nargs="+", help="real images (files or folders) for the agreement check")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"inference_speed_{datetime.date.today()}.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = {"threads": a.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "images_per_s": {}}
    for name, size, batch in CASES:
        speeds = throughput(name, size, batch, a.reps)
        results["images_per_s"][f"{name} {size}px batch {batch}"] = speeds
        for label, v in speeds.items():
            print(f"{name:9s} {size}px batch {batch:3d}  {label:27s} {v:9.1f} img/s")
    if a.checkpoint and a.images:
        results["agreement"] = agreement(a.checkpoint, a.images)
        for prec, r in results["agreement"].items():
            print(f"{prec} fast path vs plain fp32: top-1 agreement {r['top1_agreement']:.2f}% on {r['n']} images, "
                  f"max |prob diff| {r['max_abs_prob_diff']:.2e}")
    write_json(results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
