"""Data pipeline throughput (images/s) of our loaders, without a model: benchmarks/bench_data.py.

Three measurements: CIFAR in memory with augmentation (the training loader at batch 128); a
folder of CIFAR JPEGs built twice, with an empty decode cache and then from it; and a folder of
larger JPEGs (ImageNet-like sizes, made in a temporary folder) through scale augmentation with
a few worker counts and through centre-crop evaluation at 224 px.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from resnetlab.config import DataConfig
from resnetlab.data import LoaderSpec, build_data, make_eval_loader, make_train_loader

from .images import write_large_jpegs
from .timing import stopwatch

BATCH = 128  # CIFAR loaders
LARGE_BATCH, LARGE_SIZE = 32, 224


def images_per_second(loader, limit: int | None = None) -> tuple[float, int]:
    """(images/s, images) of one pass over `loader` (at most `limit` batches)."""
    seen = 0
    with stopwatch() as t:
        for step, (x, _) in enumerate(loader):
            seen += (x[0] if isinstance(x, list) else x).shape[0]
            if limit is not None and step + 1 >= limit:
                break
    return seen / t.s, seen


def cifar_memory(cfg: DataConfig, epochs: int = 3) -> dict:
    """The augmented training loader over an in-memory dataset: the best of `epochs` epochs."""
    bundle = build_data(cfg)
    rates = [images_per_second(make_train_loader(bundle.train, cfg, LoaderSpec(BATCH), seed=0, epoch=e))[0]
             for e in range(epochs)]
    return {"images_per_s": round(max(rates)), "epochs_timed": epochs, "batch_size": BATCH,
            "images_per_epoch": len(bundle.train) // BATCH * BATCH}


def cifar_folder(root: str) -> dict:
    """First run (empty cache: decode every file) and second run (from the cache): build_data time,
    then two epochs; the first epoch also pays the one-time padded copy of the training set."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(dataset="folder", root=root, cache_dir=cache)
        for name in ("first_run_decode", "second_run_cached"):
            with stopwatch() as built:
                bundle = build_data(cfg)
            epochs = [images_per_second(make_train_loader(bundle.train, cfg, LoaderSpec(BATCH), seed=0, epoch=e))
                      for e in range(2)]
            files = len(bundle.train) + len(bundle.val) + len(bundle.test)
            out[name] = {"build_s": round(built.s, 2), "files": files, "files_per_s": round(files / built.s),
                         "epoch1_images_per_s": round(epochs[0][0]), "epoch2_images_per_s": round(epochs[1][0])}
    return out


def large_jpeg_folder(count: int, workers_list: list[int]) -> dict:
    """Scale-augmented training batches with each worker count, then centre-crop evaluation."""
    out = {"files": count, "image_size": LARGE_SIZE}
    with tempfile.TemporaryDirectory() as tmp:
        write_large_jpegs(Path(tmp), count)
        cfg = DataConfig(dataset="folder", root=tmp, augment="imagenet", image_size=LARGE_SIZE, val_size=0,
                         normalize="imagenet")
        train = build_data(cfg).train
        for workers in workers_list:
            loader = make_train_loader(train, cfg, LoaderSpec(LARGE_BATCH, workers=workers), seed=0)
            out[f"train_scale_aug_workers{workers}_images_per_s"] = round(images_per_second(loader)[0], 1)
        ev = make_eval_loader(train, cfg, LoaderSpec(LARGE_BATCH, workers=workers_list[-1]), "center")
        out[f"eval_center_workers{workers_list[-1]}_images_per_s"] = round(images_per_second(ev)[0], 1)
    return out
