"""The facts about a --data folder that the automatic recipe (resnetlab.autorecipe) is chosen from:
a listing and a few image headers, nothing decoded."""
from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.autorecipe import DataFacts
from resnetlab.errors import UserError

from . import folder as folders
from .cifar import SPECS
from .decode import unreadable_headers

CIFAR_TRAIN_IMAGES = 50000
HEADERS_READ = 20000  # with skip_bad, headers read to count the images that read; more files: estimated
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def survey(dataset: str, root: str | Path, skip_bad: bool = False) -> DataFacts:
    """DataFacts of a dataset as --data found it (dataset: what engine.datadir worked out)."""
    if dataset in SPECS:
        return DataFacts(dataset, CIFAR_TRAIN_IMAGES, CIFAR_CLASSES[dataset], False, 32, True,
                         CIFAR_TRAIN_IMAGES // CIFAR_CLASSES[dataset])
    if dataset != "folder":
        raise UserError(f"--data {root}: no recipe given, and the automatic one needs image folders "
                        "(ROOT/<class>/ or ROOT/train/<class>/) or CIFAR; pass --recipe NAME")
    root = Path(root)
    layout = folders.folder_layout(root)
    if layout is None or (layout == "splits" and not (root / "train").is_dir()):
        raise UserError(f"--data {root}: no training images found; expected ROOT/<class>/<image>, "
                        "ROOT/train/<class>/<image> (and optionally val/, test/) or the CIFAR python files")
    train_dir = root / "train" if layout == "splits" else root
    scan = folders.scan(train_dir, None, skip_bad)
    paths, labels = scan.paths, scan.labels
    largest = lambda labels: int(labels.bincount().max()) if len(labels) else 0  # noqa: E731
    images, biggest = len(paths), largest(labels)
    if skip_bad:  # the files the run will leave out: the batch, steps and warm-up are sized without them
        step = -(-len(paths) // HEADERS_READ)  # 1: every header read; beyond HEADERS_READ files, a spread sample's
        bad = {path for path, _ in unreadable_headers(paths[::step])}
        keep = torch.tensor([path not in bad for path in paths], dtype=torch.bool)
        paths, labels = [p for p, k in zip(paths, keep.tolist()) if k], labels[keep]
        share = 1.0 - len(bad) / max(len(scan.paths[::step]), 1)  # of the files that read, judged by the sample
        images, biggest = (len(paths), largest(labels)) if step == 1 else (round(images * share), round(biggest * share))
    sides = probed_sides(paths)
    return DataFacts("folder", images, len(scan.classes), layout == "splits" and (root / "val").is_dir(),
                     sorted(sides)[len(sides) // 2] if sides else 0, folders.small_side(paths) is not None, biggest)


def probed_sides(paths: list[str]) -> list[int]:
    """Shorter sides of up to folder.PROBES images spread evenly over the list (headers only)."""
    return [min(size) for size in folders.probed_sizes(paths)]
