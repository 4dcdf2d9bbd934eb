"""build_data: turn a DataConfig into train/val/test datasets, class names and a fitted normaliser.

Splits by source:
- cifar10 / cifar100: train = the official training batches, test = the official test batch.
- folder, ROOT/train/<class>/ (+ val/, test/): train = ROOT/train; val = ROOT/val (or, with
  data.val_folder=test and no ROOT/test, ROOT/val is the test split: ImageNet); test = ROOT/test.
- folder, ROOT/<class>/ only: every image is a training image (as Keras reads such a folder).
- synthetic: train and test of data.synthetic_size images each.
Without a val folder, val is held out of train (data.val_size: a count drawn at random, or a
fraction drawn per class, chosen by the seed), so model selection never touches the test set.
What was held out (files or indices) and the images per class are in bundle.provenance and in the run's
data.json (`data_record`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnetlab.config import DataConfig, check_section
from resnetlab.errors import ResnetlabWarning, UserError, count, option
from resnetlab.files import cache_home, home

from . import folder as folders
from .cifar import SPECS, load_cifar
from .datasets import ArrayDataset, FileDataset, case_twins
from .fingerprints import fingerprint
from .decode import unreadable_headers
from .loaders import check_augment
from .normalize import Normalizer
from .overlap import describe_overlap, overlap_record, split_overlap
from .sampling import holdout, stratified_subset
from .summary import describe_empty, describe_skipped, describe_unvalidated
from .synthetic import synthetic

DATASETS = ("cifar10", "cifar100", "folder", "synthetic")


@dataclass
class DataBundle:
    train: ArrayDataset | FileDataset
    val: ArrayDataset | FileDataset | None
    test: ArrayDataset | FileDataset | None
    classes: list[str]
    normalizer: Normalizer
    provenance: dict = field(default_factory=dict)  # source, root, cache file, skipped files, ...


def build_data(cfg: DataConfig, seed: int = 0, warn_skipped: bool = True,
               normalizer: Normalizer | None = None, warn_unvalidated: bool = True) -> DataBundle:
    """warn_skipped: with data.skip_bad, say (a ResnetlabWarning) how many files were skipped, the
    first few by name, and which val/test classes were left without images; callers that list
    every skipped file themselves (the data command) turn it off. warn_unvalidated: say which classes
    the hold-out took no image of; off where the validation split is not used (scoring the test
    split). normalizer: a trained model's
    (a resumed run, an evaluation), used as it is: none is fitted (that decodes up to
    data.stats_images training files)."""
    check_section("data", cfg)  # a DataConfig made in code (the data command) skips config loading
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown data.dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    train, val, test, provenance = _load(cfg)
    check_augment(train, cfg)
    provenance["validation"] = {"from": "val/ folder" if val is not None else "none", "val_size": cfg.val_size}
    files = provenance.pop("split_files", None)  # folders: the paths of each split's images, in order
    pick = lambda paths, indices: [paths[i] for i in indices.tolist()]  # noqa: E731
    if val is None and cfg.val_size > 0:
        keep, held = holdout(train.labels, cfg.val_size, seed)
        train, val = train.subset(keep), train.subset(held)
        if files:
            files["train"], files["val"] = pick(files["train"], keep), pick(files["train"], held)
        names = provenance.pop("train_files", None)
        missing = [c for c, n in zip(train.classes, torch.bincount(val.labels, minlength=len(train.classes)).tolist())
                   if not n]
        if missing and warn_skipped and warn_unvalidated:
            warnings.warn(describe_unvalidated(missing, train.classes, cfg.val_size), ResnetlabWarning, stacklevel=2)
        provenance["validation"] = {"from": "held out of train", "val_size": cfg.val_size, "images": len(held), "seed": seed,
                              **({"files": [names[i] for i in held.tolist()]} if names else {"indices": held.tolist()})}
    provenance.pop("train_files", None)
    if cfg.train_size is not None:  # after the hold-out, so val is the same with or without it
        chosen = stratified_subset(train.labels, cfg.train_size, seed)
        train = train.subset(chosen)
        if files:
            files["train"] = pick(files["train"], chosen)
    if files:
        shared = split_overlap(files)
        provenance["overlap"] = overlap_record(shared)
        message = describe_overlap(shared, provenance["root"], provenance["validation"]["from"] == "held out of train")
        if message:  # also for the data command, which lists skipped files itself but not this
            warnings.warn(message, ResnetlabWarning, stacklevel=2)
    normalizer = normalizer or fit_normalizer(train, cfg, seed)
    if warn_skipped and provenance.get("skipped"):
        warnings.warn(describe_skipped(provenance["skipped"], provenance["root"]), ResnetlabWarning, stacklevel=2)
    for split, names in provenance.get("empty_classes", {}).items() if warn_skipped else ():
        warnings.warn(describe_empty(split, names, train.classes), ResnetlabWarning, stacklevel=2)
    return DataBundle(train, val, test, train.classes, normalizer, {"dataset": cfg.dataset, **provenance})


def _load(cfg: DataConfig):
    if cfg.dataset == "synthetic":
        return (synthetic(cfg.synthetic_size, cfg.synthetic_classes, cfg.image_size, "train"), None,
                synthetic(cfg.synthetic_size, cfg.synthetic_classes, cfg.image_size, "test"), {})
    root = Path(cfg.root).expanduser() if cfg.root else None
    if cfg.dataset in SPECS:
        root = root or cifar_home(cfg.dataset)
        train, test = load_cifar(cfg.dataset, root, cfg.download)
        return train, None, test, {"root": str(root)}
    if root is None:
        raise UserError(f"data.root is not set; {option('pass --data ROOT', 'give the override data.root=ROOT')} with "
                        "ROOT/train/<class>/<image>")
    return _load_folder(root, cfg)


def cifar_home(dataset: str) -> Path:
    """Where CIFAR is kept without data.root: datasets/ of the cache (files.cache_home), or of the
    one versions before 2026-12-06 used whatever XDG_CACHE_HOME said (~/.cache/resnetlab) while it
    holds the dataset and the cache does not: no second download, no run that cannot find its data."""
    kept = cache_home() / "datasets"
    if os.environ.get("RESNETLAB_CACHE"):  # followed then as now
        return kept
    legacy = home() / ".cache" / "resnetlab" / "datasets"
    found = lambda root: (root / SPECS[dataset].folder).is_dir()  # noqa: E731
    return legacy if not found(kept) and found(legacy) else kept


def _load_folder(root: Path, cfg: DataConfig):
    layout = folders.folder_layout(root)
    if layout is None:
        raise UserError(f"{root} has no class folders; expected ROOT/<class>/<image> or ROOT/train/<class>/<image> "
                        "(and optionally ROOT/val/ and ROOT/test/)")
    if layout == "splits" and not (root / "train").is_dir():
        present = ", ".join(f"{s}/" for s in folders.SPLITS if (root / s).is_dir())
        evaluate = option(f"`resnetlab eval RUN --data {root}`", f"evaluate_checkpoint(RUN, data={str(root)!r})")
        raise UserError(f"{root} has no train/ folder (only {present}): nothing to train on; expected "
                        f"ROOT/train/<class>/<image> or ROOT/<class>/<image> ({evaluate} evaluates a model on it)")
    unread = [d for d in folders.subfolders(root) if d not in folders.SPLITS and folders.holds_images(root / d)
              ] if layout == "splits" else []
    if unread:  # a class folder put beside train/ instead of inside it
        shown = ", ".join(f"{d}/" for d in unread[:5]) + (", ..." if len(unread) > 5 else "")
        warnings.warn(f"{root} has {'folders' if len(unread) > 1 else 'a folder'} beside train/ that no split reads: "
                      f"{shown}; a class's images belong in train/<class>/ (and val/<class>/, test/<class>/)",
                      ResnetlabWarning, stacklevel=3)
    first = folders.scan(root / "train" if layout == "splits" else root, None, cfg.skip_bad)
    if len(first.classes) < 2:
        raise UserError(f"{root} has one class folder ({first.classes[0]}); a classifier needs at least two: "
                        "ROOT/<class>/<image> or ROOT/train/<class>/<image>, one folder per class")
    for twins in case_twins(first.classes):
        warnings.warn(_twins_said(twins), ResnetlabWarning, stacklevel=3)
    scanned = {"train": first}
    for split in ("val", "test") if layout == "splits" else ():
        if (root / split).is_dir():
            scanned[split] = folders.scan(root / split, first.classes, cfg.skip_bad)
    if "test" not in scanned and "val" in scanned and cfg.val_folder == "test":
        scanned["test"] = scanned.pop("val")  # ImageNet: val/ is the test split; val is held out of train
    out, provenance = load_scanned(scanned, root, cfg)
    provenance["layout"] = layout
    provenance["empty_classes"] = _empty_classes(out, first.classes, root / "train" if layout == "splits" else root,
                                           provenance["skipped"])
    return out["train"], out.get("val"), out.get("test"), provenance


def _twins_said(twins: list[str]) -> str:
    """The warning about class folders equal but for case or for spaces at their ends (datasets.case_twins).
    Names that differ by spaces are shown quoted: a space at the end of a folder name is invisible."""
    if len({t.casefold() for t in twins}) == 1:
        return (f"class folders {' and '.join(f'{t}/' for t in twins)} differ only by case: they are {len(twins)} "
                "classes here (and cannot both exist on macOS or Windows); if they are one class, merge them into "
                "one folder")
    differ = "spaces at their ends" if len({t.strip() for t in twins}) == 1 else "case or by spaces at their ends"
    return (f"class folders {' and '.join(map(repr, twins))} differ only by {differ}: they are {len(twins)} classes "
            "here; if they are one class, merge them into one folder")


def labelled_folder(root: Path, split: str, cfg: DataConfig):
    """(dataset, provenance) of a labelled folder to evaluate on, ROOT/<class>/ or ROOT/<split>/<class>/
    without a train/ folder, with its own sorted classes (match them to a model's with
    datasets.match_classes) and cfg's preprocessing."""
    layout = folders.folder_layout(root)
    if layout is None:
        raise UserError(f"{root} has no class folders; expected ROOT/<class>/<image> or ROOT/{split}/<class>/<image>")
    if layout == "splits" and not (root / split).is_dir():
        present = ", ".join(f"{s}/" for s in folders.SPLITS if (root / s).is_dir())
        raise UserError(f"{root} has no {split}/ folder (only {present}); pick the split with "
                        + option("--split", "split="))
    out, provenance = load_scanned({split: folders.scan(root / split if layout == "splits" else root, None, cfg.skip_bad)},
                             root, cfg)
    provenance.pop("split_files")
    if provenance["skipped"]:
        warnings.warn(describe_skipped(provenance["skipped"], root), ResnetlabWarning, stacklevel=2)
    return out[split], provenance


def load_scanned(scanned: dict, root: Path, cfg: DataConfig) -> tuple[dict, dict]:
    """Datasets of scanned split folders, the first being train (it has the classes): in memory
    when its images are small (decoded once, through the cache), else files. provenance: root, caches,
    skipped and ignored files, and train_files (the kept training paths, relative to root)."""
    first = next(iter(scanned.values()))
    classes, side = first.classes, folders.small_side(first.paths)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_home() / "folders"
    out, provenance = {}, {"root": str(root), "in_memory": side is not None, "caches": [], "resized": 0, "skipped": [],
                           "ignored": [relative(p, root) for scan in scanned.values() for p in scan.ignored]}
    for split, scan in scanned.items():
        provenance["skipped"] += scan.skipped
        kept = scan.paths
        if side is not None:
            out[split], meta = folders.small_dataset(scan.paths, scan.labels, classes, side, root, cache_dir, cfg.skip_bad,
                                                     split)
            provenance["caches"] += [meta["cache"]] if meta["cache"] else []
            provenance["resized"] += meta["resized"]
            provenance["skipped"] += meta["skipped"]
            dropped = {p for p, _ in meta["skipped"]}
            kept = [p for p in scan.paths if p not in dropped]
        elif cfg.skip_bad:
            # Photos are decoded only while training: leave out the files whose header cannot be read
            # now, so they are listed and counted (and a class left without images is said) as for small
            # images; one cut short past its header is still skipped when it is decoded.
            bad = unreadable_headers(scan.paths)
            provenance["skipped"] += bad
            dropped = {p for p, _ in bad}
            keep = torch.tensor([p not in dropped for p in scan.paths], dtype=torch.bool)
            kept = [p for p in scan.paths if p not in dropped]
            out[split] = FileDataset(kept, scan.labels[keep], classes)
        else:
            out[split] = FileDataset(scan.paths, scan.labels, classes)
        if split == "train":
            provenance["train_files"] = [relative(p, root) for p in kept]
        provenance.setdefault("split_files", {})[split] = kept
        pixels = out[split].images.numpy() if side is not None else None  # (N, 3, H, W), contiguous: hashed in place
        provenance.setdefault("fingerprints", {})[split] = fingerprint(kept, root, pixels)
    if provenance["resized"]:  # off-size small images, or a few large ones among them
        warnings.warn(f"{provenance['resized']} of {sum(len(d) for d in out.values())} images are not {side}x{side} "
                      f"px like the rest: each was resized (shorter side) and centre-cropped to it", ResnetlabWarning,
                      stacklevel=4)
    return out, provenance


def relative(path: str, root: Path) -> str:
    prefix = str(root).rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else path


def _empty_classes(splits: dict, classes: list[str], train_dir: Path, skipped: list) -> dict[str, list[str]]:
    """Classes with no images left in val/test (possible only with skip_bad; reported, not fatal:
    accuracy over the other classes is still exact). In train it is an error: the model would keep
    an output it never learns, and dropping the class would renumber every label after it."""
    empty = {}
    for split, data in splits.items():
        counts = torch.bincount(data.labels, minlength=len(classes))
        names = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
        if names and split == "train":
            folder = train_dir / names[0]
            lost = [p for p, _ in skipped if p.startswith(str(folder) + os.sep)]
            why = f"{folder}: {count(len(lost), 'unreadable file')} skipped" if lost else f"{folder} holds no images"
            raise UserError(f"class {', '.join(map(repr, names))} has no readable training images ({why}); "
                            "fix its files, or remove the class from every split")
        if names:
            empty[split] = names
    return empty


def fit_normalizer(train, cfg: DataConfig, seed: int = 0) -> Normalizer:
    """Normalisation statistics of the training split (never val or test).

    In-memory data: every training image. Files: the centre views of up to data.stats_images
    training images (a seeded sample), at the training crop size."""
    if cfg.normalize == "imagenet":
        return Normalizer.fit("imagenet", [])
    return Normalizer.fit(cfg.normalize, train.stats_batches(cfg, seed))


def describe(bundle: DataBundle) -> str:
    """One line: source, split sizes, classes, image size and where the images live."""
    size = bundle.train.where()
    splits = ", ".join(f"{name} {len(d)}" for name, d in (("train", bundle.train), ("val", bundle.val),
                                                           ("test", bundle.test)) if d is not None)
    extra = f", {count(len(bundle.provenance['skipped']), 'bad file')} skipped" if bundle.provenance.get("skipped") else ""
    extra += f", {len(bundle.provenance['ignored'])} other files ignored" if bundle.provenance.get("ignored") else ""
    extra += "".join(f", no {split} images of {', '.join(names)}" for split, names in bundle.provenance.get("empty_classes", {}).items())
    return (f"{bundle.provenance.get('dataset')}: {splits} images, {len(bundle.classes)} classes, {size}, "
            f"normalize={bundle.normalizer.kind}{extra}")
