"""build_data: turn a DataConfig into train/val/test datasets, class names and a fitted normaliser.

Splits by source:
- cifar10 / cifar100: train = the official training batches, test = the official test batch.
- folder: train = ROOT/train; test = ROOT/test if present, else ROOT/val (then val/ is the test
  split); if both val/ and test/ exist, val = ROOT/val and data.val_size is not used.
- synthetic: train and test of data.synthetic_size images each.
Otherwise val is carved out of train (data.val_size images, chosen by the seed), so model
selection never touches the test set.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnetlab.config import DataConfig, check_section
from resnetlab.errors import ResnetlabWarning, UserError

from . import folder as folders
from .cifar import SPECS, load_cifar
from .datasets import ArrayDataset, FileDataset
from .loaders import check_augment, make_eval_loader
from .normalize import Normalizer
from .sampling import STATS, generator, split_indices, stratified_subset
from .synthetic import synthetic

DATASETS = ("cifar10", "cifar100", "folder", "synthetic")
DEFAULT_CACHE = Path(os.environ.get("RESNETLAB_CACHE", Path.home() / ".cache" / "resnetlab"))


@dataclass
class DataBundle:
    train: ArrayDataset | FileDataset
    val: ArrayDataset | FileDataset | None
    test: ArrayDataset | FileDataset | None
    classes: list[str]
    normalizer: Normalizer
    info: dict = field(default_factory=dict)  # source, root, cache file, skipped files, ...


def build_data(cfg: DataConfig, seed: int = 0, warn_skipped: bool = True) -> DataBundle:
    """warn_skipped: with data.skip_bad, say (a ResnetlabWarning) how many files were skipped, the
    first few by name, and which val/test classes were left without images; callers that list
    every skipped file themselves (the data command) turn it off."""
    check_section("data", cfg)  # a DataConfig made in code (the data command) skips config loading
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown data.dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    train, val, test, info = _load(cfg)
    check_augment(train, cfg)
    if val is None and cfg.val_size > 0:
        keep, held = split_indices(len(train), cfg.val_size, seed)
        train, val = train.subset(keep), train.subset(held)
    if cfg.train_size is not None:  # after the hold-out, so val is the same with or without it
        train = train.subset(stratified_subset(train.labels, cfg.train_size, seed))
    normalizer = fit_normalizer(train, cfg, seed)
    if warn_skipped and (info.get("skipped") or info.get("empty_classes")):
        warnings.warn(folders.describe_skipped(info["skipped"], info["root"], info["empty_classes"]),
                      ResnetlabWarning, stacklevel=2)
    return DataBundle(train, val, test, train.classes, normalizer, {"dataset": cfg.dataset, **info})


def _load(cfg: DataConfig):
    if cfg.dataset == "synthetic":
        return (synthetic(cfg.synthetic_size, cfg.synthetic_classes, cfg.image_size, "train"), None,
                synthetic(cfg.synthetic_size, cfg.synthetic_classes, cfg.image_size, "test"), {})
    root = Path(cfg.root).expanduser() if cfg.root else None
    if cfg.dataset in SPECS:
        root = root or DEFAULT_CACHE / "datasets"
        train, test = load_cifar(cfg.dataset, root, cfg.download)
        return train, None, test, {"root": str(root)}
    if root is None:
        raise UserError("data.root is not set; pass --data ROOT with ROOT/train/<class>/<image>")
    return _load_folder(root, cfg)


def _load_folder(root: Path, cfg: DataConfig):
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; expected ROOT/train/<class>/<image> "
                        f"(and optionally ROOT/val/ and ROOT/test/)")
    paths, labels, classes, skipped = folders.scan(root / "train", None, cfg.skip_bad)
    scanned = {"train": (paths, labels)}
    for split in ("val", "test"):
        if (root / split).is_dir():
            p, y, _, bad = folders.scan(root / split, classes, cfg.skip_bad)
            scanned[split], skipped = (p, y), skipped + bad
    if "test" not in scanned and "val" in scanned:
        scanned["test"] = scanned.pop("val")  # only val/: it is the test split; val is carved from train
    side = folders.small_side(paths)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else DEFAULT_CACHE / "folders"
    out, info = {}, {"root": str(root), "in_memory": side is not None, "caches": [], "resized": 0}
    for split, (p, y) in scanned.items():
        if side is not None:
            out[split], meta = folders.small_dataset(p, y, classes, side, root, cache_dir, cfg.skip_bad)
            info["caches"].append(meta["cache"])
            info["resized"] += meta["resized"]
            skipped += meta["skipped"]
        else:
            out[split] = FileDataset(p, y, classes)
    info["skipped"] = skipped
    info["empty_classes"] = _empty_classes(out, classes, root, skipped)
    return out["train"], out.get("val"), out.get("test"), info


def _empty_classes(splits: dict, classes: list[str], root: Path, skipped: list) -> dict[str, list[str]]:
    """Classes with no images left in val/test (possible only with skip_bad; reported, not fatal:
    accuracy over the other classes is still exact). In train it is an error: the model would keep
    an output it never learns, and dropping the class would renumber every label after it."""
    empty = {}
    for split, data in splits.items():
        counts = torch.bincount(data.labels, minlength=len(classes))
        names = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
        if names and split == "train":
            folder = root / "train" / names[0]
            lost = [p for p, _ in skipped if p == str(folder) or p.startswith(str(folder) + os.sep)]
            raise UserError(f"class {', '.join(map(repr, names))} has no readable training images ({folder}: "
                            f"{len(lost)} bad files skipped); fix its files, or remove the class from every split")
        if names:
            empty[split] = names
    return empty


def fit_normalizer(train, cfg: DataConfig, seed: int = 0) -> Normalizer:
    """Normalisation statistics of the training split (never val or test).

    In-memory data: every training image. Files: the centre views of up to data.stats_images
    training images (a seeded sample), at the training crop size."""
    if cfg.normalize == "imagenet":
        return Normalizer.fit("imagenet", [])
    if isinstance(train, ArrayDataset):
        return Normalizer.fit(cfg.normalize, train.images.split(2048))
    n = min(len(train), cfg.stats_images)
    sample = train.subset(torch.randperm(len(train), generator=generator(STATS, seed))[:n].sort().values)
    views = make_eval_loader(sample, cfg, batch_size=64, protocol="center")
    return Normalizer.fit(cfg.normalize, (v[0] for v, _ in views))


def describe(bundle: DataBundle) -> str:
    """One line: source, split sizes, classes, image size and where the images live."""
    size = ("x".join(map(str, bundle.train.image_size)) + " in memory"
            if isinstance(bundle.train, ArrayDataset) else "image files")
    splits = ", ".join(f"{name} {len(d)}" for name, d in (("train", bundle.train), ("val", bundle.val),
                                                           ("test", bundle.test)) if d is not None)
    extra = f", {len(bundle.info['skipped'])} bad files skipped" if bundle.info.get("skipped") else ""
    extra += "".join(f", no {split} images of {', '.join(names)}" for split, names in bundle.info.get("empty_classes", {}).items())
    return (f"{bundle.info.get('dataset')}: {splits} images, {len(bundle.classes)} classes, {size}, "
            f"normalize={bundle.normalizer.kind}{extra}")
