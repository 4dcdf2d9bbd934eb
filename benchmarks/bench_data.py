"""Data pipeline throughput (images/s), written to benchmarks/results/data_<date>.json.

    python benchmarks/bench_data.py [--cifar-jpeg /work/shared/data/cifar10-jpeg] [--large 384]

1. CIFAR in memory with augmentation (pad 4, random crop, flip): the training loader, batch 128.
2. The cifar10-jpeg folder: build_data with an empty cache (decode every JPEG once) + one epoch,
   then build_data again (served from the .npz cache) + one epoch.
3. A folder of larger JPEGs (made here, in a temp dir, ImageNet-like sizes) at 224 px: scale
   augmentation training batches with 0 and 2 workers, and centre-crop evaluation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import LoaderSpec, build_data, make_eval_loader, make_train_loader

RESULTS = Path(__file__).parent / "results"


def images_per_second(loader, limit: int | None = None) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for step, (x, _) in enumerate(loader):
        seen += (x[0] if isinstance(x, list) else x).shape[0]
        if limit is not None and step + 1 >= limit:
            break
    return seen / (time.perf_counter() - start), seen


def bench_cifar_memory(cfg: DataConfig) -> dict:
    bundle = build_data(cfg)
    rates = [images_per_second(make_train_loader(bundle.train, cfg, LoaderSpec(128), seed=0, epoch=e))[0]
             for e in range(3)]
    return {"images_per_s": round(max(rates)), "epochs_timed": 3, "batch_size": 128,
            "images_per_epoch": len(bundle.train) // 128 * 128}


def bench_cifar_folder(root: str) -> dict:
    """First run (empty cache: decode every file) and second run (from the cache): build_data time,
    then two epochs; the first epoch also pays the one-time padded copy of the training set."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(dataset="folder", root=root, cache_dir=cache)
        for name in ("first_run_decode", "second_run_cached"):
            start = time.perf_counter()
            bundle = build_data(cfg)
            built = time.perf_counter() - start
            epochs = [images_per_second(make_train_loader(bundle.train, cfg, LoaderSpec(128), seed=0, epoch=e))
                      for e in range(2)]
            files = len(bundle.train) + len(bundle.val) + len(bundle.test)
            out[name] = {"build_s": round(built, 2), "files": files, "files_per_s": round(files / built),
                         "epoch1_images_per_s": round(epochs[0][0]), "epoch2_images_per_s": round(epochs[1][0])}
    return out


def make_large_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """ImageNet-like JPEGs: 10 classes, sizes around 500x375, smooth content plus noise."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = int(rng.integers(400, 520)), int(rng.integers(300, 400))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        img = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / "train" / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)


def bench_large(count: int, workers_list: list[int]) -> dict:
    out = {"files": count, "image_size": 224}
    with tempfile.TemporaryDirectory() as tmp:
        make_large_jpegs(Path(tmp), count)
        cfg = DataConfig(dataset="folder", root=tmp, augment="imagenet", image_size=224, val_size=0,
                         normalize="imagenet")
        train = build_data(cfg).train
        for workers in workers_list:
            loader = make_train_loader(train, cfg, LoaderSpec(32, workers=workers), seed=0)
            out[f"train_scale_aug_workers{workers}_images_per_s"] = round(images_per_second(loader)[0], 1)
        ev = make_eval_loader(train, cfg, LoaderSpec(32, workers=workers_list[-1]), "center")
        out[f"eval_center_workers{workers_list[-1]}_images_per_s"] = round(images_per_second(ev)[0], 1)
    return out


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-jpeg", default="/work/shared/data/cifar10-jpeg", help="cifar10-jpeg folder ('' skips)")
    parser.add_argument("--large", type=int, default=384, help="number of large JPEGs to make (0 skips)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "command": "python benchmarks/bench_data.py"}
    memory_cfg = (DataConfig(dataset="folder", root=args.cifar_jpeg, val_size=0) if args.cifar_jpeg
                  else DataConfig(dataset="synthetic", synthetic_size=50000, val_size=0))
    if args.cifar_jpeg:
        results["cifar10_jpeg_folder"] = bench_cifar_folder(args.cifar_jpeg)
    results["cifar_memory_augment"] = {"source": memory_cfg.dataset, **bench_cifar_memory(memory_cfg)}
    if args.large:
        results["large_jpeg_folder"] = bench_large(args.large, args.workers)
    results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"data_{results['date'][:10]}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
