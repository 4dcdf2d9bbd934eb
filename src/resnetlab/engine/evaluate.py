"""Top-1 / top-5 accuracy under the paper's testing protocols.

center: one centre crop. flip: it and its mirror. 10crop: four corners + centre and their flips
(Sec. 3.4, "standard 10-crop testing"). multiscale: the fully-convolutional form of Sec. 3.4 (VGG's
dense evaluation): the whole image, its shorter side resized to each of 224, 256, 384, 480, 640
(scaled by data.image_size / 224; aspect kept), and its mirror, each through the network, whose
global average pooling averages the score map (data/views.py: images of a batch grouped by shape).
The views of one image are combined by averaging their softmax outputs (engine/scoring.py).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnetlab.config import PROTOCOLS
from resnetlab.errors import ResnetlabWarning, UserError, expect_path, option

from .distributed import DistInfo, all_reduce_sum
from .runtime import Runtime
from .scoring import predict_views


def _topk(probs: torch.Tensor) -> torch.Tensor:
    """(B, k) class indices, best first, k = min(5, classes); one call, so top-1 is the same everywhere."""
    return probs.topk(min(5, probs.shape[1]), dim=1).indices


def count_correct(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[top-1 correct, top-5 correct, n] for one batch (top-5 is top-k with k = min(5, classes))."""
    topk = _topk(probs)  # (B, k)
    hits = topk == labels[:, None]
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels), device=labels.device)]).double()


def count_confusion(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes * num_classes,) float64 counts of (true label, top-1 prediction), row-major."""
    pairs = labels.long() * num_classes + _topk(probs)[:, 0]
    return torch.bincount(pairs, minlength=num_classes * num_classes).double()


def accuracy_report(correct1: float, correct5: float, n: float, protocol: str) -> dict:
    """The metrics dict every caller prints or stores (accuracies and errors in percent)."""
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "top1_err": float("nan"), "top5_err": float("nan"),
                "n": 0, "protocol": protocol}
    top1, top5 = 100.0 * correct1 / n, 100.0 * correct5 / n
    return {"top1": top1, "top5": top5, "top1_err": 100.0 - top1, "top5_err": 100.0 - top5,
            "n": int(n), "protocol": protocol}


def evaluate(model: nn.Module, normalizer: nn.Module, loader, rt: Runtime, protocol: str = "center",
             num_classes: int = 0, progress=None) -> dict:
    """Accuracy of `model` over an eval loader (summed over processes when distributed).

    With num_classes, the same pass also counts the confusion matrix: the report then holds
    "confusion", an int64 (C, C) CPU tensor, rows = true class, columns = top-1 prediction.
    The model is put in eval mode and left there; callers switch back to training themselves.
    progress(images done): called after each batch, when given.
    """
    model.eval()
    totals = torch.zeros(3 + num_classes * num_classes, dtype=torch.float64, device=rt.device)
    done = 0
    for views, labels in loader:
        probs = predict_views(model, normalizer, list(views), rt)
        done += len(labels)
        if progress:
            progress(done)
        totals[:3] += count_correct(probs, labels)
        if num_classes:
            totals[3:] += count_confusion(probs, labels, num_classes)
    totals = all_reduce_sum(totals).cpu()  # one reduction for the counts and the matrix
    c1, c5, n = totals[:3].tolist()
    report = accuracy_report(c1, c5, n, protocol)
    if num_classes:  # float64 holds counts exactly up to 2**53
        from .confusion import balanced_top1

        report["confusion"] = totals[3:].round().long().view(num_classes, num_classes)
        report["balanced_top1"] = balanced_top1(report["confusion"])
    return report


@dataclass(frozen=True)
class EvalModel:
    """A model ready to score images: the network, the normaliser its uint8 input goes through,
    and the runtime (device, precision, memory format) it runs under."""

    model: nn.Module
    normalizer: nn.Module
    rt: Runtime


def run_eval_spec(cfg, dist_info: DistInfo, rt: Runtime, workers: int = 0):
    """How a training run reads its val/test splits: the global batch shared by the processes,
    each scoring its exact shard."""
    from resnetlab.data import LoaderSpec

    return LoaderSpec(max(cfg.optim.batch_size // dist_info.world_size, 1), dist_info.rank, dist_info.world_size, workers,
                      rt.device)


def evaluate_split(scored: EvalModel, dataset, data_cfg, spec, protocol: str = "center",
                   confusion: bool = False, progress=None) -> dict:
    """Evaluate on one dataset split read as `spec` (a data.LoaderSpec) says, with the data
    package's protocol views (confusion: also count the confusion matrix over the split's
    classes, see `evaluate`)."""
    from resnetlab.data import make_eval_loader

    loader = make_eval_loader(dataset, data_cfg, spec, protocol)
    return evaluate(scored.model, scored.normalizer, loader, scored.rt, protocol, len(dataset.classes) if confusion else 0,
                    progress and (lambda done: progress(done, len(dataset))))


def evaluate_checkpoint(checkpoint, data: str | None = None, split: str = "test", protocol: str | None = None,
                        device: str = "auto", precision: str | None = None, batch_size: int | None = None,
                        workers: int = 0, fast_path=None, skip_bad: bool = False, progress=None) -> dict:
    """Accuracy of a checkpoint (a run directory's best.pt, published weights by name) on a split of its data.

    `val` is exactly the held-out part used for model selection, as the run's data.json lists it
    (`eval_data`); `data` points at the dataset when it has moved. The checkpoint's normaliser
    (fitted on its training split) is used as saved.
    Protocol, precision, memory format, batch-norm kernels and batch size default to the run's own, so
    evaluating a run directory reproduces summary.json's numbers (the test split with its
    train.test_protocol, val with the centre view its validations used; for `auto`, the precision it
    resolved to: auto takes the fast path, the checkpoint records it). The report also holds "per_class"
    (engine/confusion.py) and "confusion" (rows = true class, columns = prediction) as lists.
    fast_path: inference.fastpath.prepare_inference (passed in by the CLI: engine comes before
    inference), used when the precision is auto; an explicit one runs eagerly as asked.
    skip_bad: leave out unreadable images (with a warning that counts them) instead of refusing.
    progress(images done, of total): called after each batch, when given (cli.console.ImageProgress).
    """
    from dataclasses import asdict

    from resnetlab.data import LoaderSpec
    from resnetlab.data.datasets import match_classes

    from .checkpoint import model_from_checkpoint, run_dir_of
    from .confusion import per_class
    from .runtime import prepare_model
    from .sources import load_source

    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if split not in ("test", "val"):
        raise UserError(f"unknown split {split!r}; choose test or val")
    data = None if data is None else str(expect_path(data, "data"))  # "~/photos" read as a shell reads it
    artifact, path = load_source(checkpoint)
    model, normalizer, classes, cfg = model_from_checkpoint(artifact)
    protocol = protocol or (cfg.train.test_protocol if split == "test" else "center")
    if skip_bad:
        from resnetlab.config import apply_overrides

        cfg = apply_overrides(cfg, [("data.skip_bad", True)])
    dataset, train = eval_data(cfg, data, split, run_dir_of(path), normalizer)
    # by name; ImageNet folders may be named by WordNet id (published weights carry both)
    dataset = match_classes(dataset, classes, f"the data at {data or cfg.data.root}", artifact.class_ids)
    if precision == "int8":  # quantized CPU kernels: fp32 NCHW in and out, int8 in between
        if train is None:
            int8, given = option("--precision int8", 'precision="int8"'), option("--data", "data")
            raise UserError(f"{int8} calibrates on training images, and {data} has none; give {given} a folder with "
                            "train/, or use `resnetlab predict --precision int8 --calibrate DIR`")
        rt = Runtime.resolve(device="cpu" if device == "auto" else device, precision="fp32", channels_last="false")
        model = int8_model(EvalModel(model, normalizer, rt), train, cfg.data)
    elif fast_path is not None and (precision or cfg.train.precision) == "auto":
        model, rt = fast_path(model, artifact.model_name, device, "auto", cfg.data.image_size, channels_last="auto")
    else:
        rt = Runtime.resolve(device=device, precision=precision or cfg.train.precision, channels_last=cfg.train.channels_last,
                             fused_bn="false" if cfg.train.fused_bn == "false" else "auto")  # the run's, where they run
        model = prepare_model(model, rt)
    spec = LoaderSpec(batch_size or cfg.optim.batch_size, workers=workers, device=rt.device)
    report = evaluate_split(EvalModel(model, normalizer.to(rt.device), rt), dataset, cfg.data, spec, protocol,
                            confusion=True, progress=progress)
    matrix = report.pop("confusion")
    # another folder than the run's own: its files go to their own folder (engine.confusion.default_eval_dir)
    other = data is not None and Path(data).expanduser().absolute() != Path(str(cfg.data.root)).expanduser().absolute()
    return {**report, "split": split, "checkpoint": str(path), "precision": "int8" if precision == "int8" else rt.precision,
            "data": str(Path(data).expanduser().absolute()) if other else None,
            "per_class": [asdict(r) for r in per_class(matrix, classes)], "confusion": matrix.tolist()}


def eval_data(cfg, data: str | None, split: str, run_dir: Path | None = None, normalizer=None):
    """(dataset to score, its training split or None) for evaluate_checkpoint, with the model's
    `normalizer` (none is fitted on the training images when it is given). A `data` folder
    without train/ (ROOT/<class>/, or ROOT/test/ or ROOT/val/ alone) is taken as it is: every image,
    with the run's preprocessing. Otherwise the run's dataset (moved to `data`, if given) is
    rebuilt, and `val` is exactly the images RUN/data.json lists as held out, even where the
    folder has gained or lost images since (a UserError names any now missing); without such a
    list (a run from before data.json) the hold-out is drawn again with the run's seed and
    val_size, with a warning when the data is not what data.json recorded."""
    from resnetlab.config import apply_overrides
    from resnetlab.data import build_data
    from resnetlab.data.build import labelled_folder
    from resnetlab.data.folder import folder_layout

    from .datadir import check_run_data_root, data_overrides
    from .preflight import data_changes, data_source

    if data is not None:
        # a run on synthetic data scores a real folder as one (`data.root` alone would be ignored by the generator)
        found = data_overrides(data, "folder" if cfg.data.dataset == "synthetic" else cfg.data.dataset)
        root, layout = Path(data), folder_layout(Path(data))
        if dict(found).get("data.dataset") == "folder" and (layout == "splits" and not (root / "train").is_dir()
                                                             or layout == "classes" and split == "test"):
            if cfg.data.root and root.resolve() == Path(cfg.data.root).resolve():
                warnings.warn(f"{data} is the folder this model was trained on: its score includes the training images; "
                              + option("--split val", 'split="val"') + " scores only the images the run held out",
                              ResnetlabWarning, stacklevel=3)
            return labelled_folder(root, split, cfg.data)[0], None
        cfg = apply_overrides(cfg, found)
    if cfg.data.root is None and cfg.data.dataset != "synthetic":
        raise UserError(f"the checkpoint does not say where its data is; pass {option('--data DIR', 'data=DIR')}")
    check_run_data_root(cfg)
    bundle = build_data(cfg.data, seed=cfg.train.seed, normalizer=normalizer, warn_unvalidated=split == "val")
    held = recorded_validation(run_dir) if split == "val" and run_dir is not None else None
    changes = data_changes(run_dir, bundle, ("train", "val")) if split == "val" and run_dir is not None else []
    if held is not None and held[0] != json.loads(json.dumps(bundle.provenance.get("validation"))):  # as data.json has it
        return held_out_again(*held, bundle, cfg, run_dir), bundle.train  # the images held out, as listed
    if changes:  # the same names held out (their images edited since), or the hold-out drawn again
        warnings.warn(f"{data_source(bundle)} is not what {run_dir} trained on ({'; '.join(changes)}): " + (
            "the images it held out are scored as they are now" if held else "the validation split is drawn from "
            "it again and may hold images the run trained on"), ResnetlabWarning, stacklevel=3)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        val = option("--split val", 'split="val"')
        raise UserError(f"the dataset at {cfg.data.root} has no {split} split"
                        + (" (the run used data.val_size=0)" if split == "val" else f"; try {val}"))
    return dataset, bundle.train


def recorded_validation(run_dir: Path) -> tuple[dict, dict] | None:
    """(validation record, whole record) of RUN/data.json when it lists the images held out of
    train (files, or indices into the training split); else None (a val/ folder, no hold-out, a
    run from before data.json)."""
    record = Path(run_dir) / "data.json"
    try:
        saved = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None  # a FIFO: never read
    except (OSError, ValueError):
        return None
    held = saved.get("validation") if isinstance(saved, dict) else None
    listed = isinstance(held, dict) and held.get("from") == "held out of train" and ("files" in held or "indices" in held)
    return (held, saved) if listed else None


def held_out_again(held: dict, saved: dict, bundle, cfg, run_dir: Path):
    """The validation images data.json lists, read from the data as it is now (a folder that gained
    or lost images draws another hold-out; scoring that one would mix in training images)."""
    from resnetlab.config import apply_overrides
    from resnetlab.data import build_data
    from resnetlab.files import cache_home
    from resnetlab.data.datasets import FileDataset
    from resnetlab.data.folder import small_dataset

    record = Path(run_dir) / "data.json"
    if "indices" in held:  # in-memory data without file names (CIFAR): the run's training split, whole
        whole = build_data(apply_overrides(cfg, [("data.val_size", 0), ("data.train_size", None)]).data,
                           seed=cfg.train.seed, warn_skipped=False, normalizer=bundle.normalizer).train
        if max(held["indices"], default=-1) >= len(whole):
            raise UserError(f"{record} lists validation image index {max(held['indices'])} of the training split, "
                            f"which now holds only {len(whole)} images: this is not the data the run trained on")
        return whole.subset(torch.tensor(held["indices"], dtype=torch.int64))
    root, classes = Path(str(cfg.data.root)).expanduser(), saved.get("classes") or bundle.classes
    missing = [f for f in held["files"] if not (root / f).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(held['files'])} validation images {record} lists are missing "
                        f"from {root} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); put them back "
                        f"to score the run's validation split, or pass {option('--data DIR', 'data=DIR')}, the folder "
                        "that holds them")
    at = 1 if saved.get("layout") == "splits" else 0  # train/<class>/... or <class>/...
    names = [Path(f).parts[at] if len(Path(f).parts) > at + 1 else None for f in held["files"]]
    if not set(names) <= set(classes):
        raise UserError(f"{record} lists validation images outside the run's class folders; it is not this run's record")
    paths = [str(root / f) for f in held["files"]]
    labels = torch.tensor([classes.index(n) for n in names], dtype=torch.int64)
    if not bundle.provenance.get("in_memory"):
        return FileDataset(paths, labels, classes)
    cache = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else cache_home() / "folders"
    return small_dataset(paths, labels, classes, bundle.train.image_size[0], root, cache, cfg.data.skip_bad,
                         f"held-out validation of {Path(run_dir).resolve()}")[0]  # each run's own: seeds differ


def int8_model(scored: EvalModel, train, data_cfg, images: int | None = None,
               reduce_range: bool | None = None) -> nn.Module:
    """The BN-folded model quantized to int8, its activation ranges calibrated on `images`
    training images spread evenly over the split (centre views, never the split being scored).
    reduce_range: 7-bit activations (None: unless the CPU has VNNI; models/quantize.py)."""
    from resnetlab.data import LoaderSpec, make_eval_loader
    from resnetlab.models.fuse import fuse_bn
    from resnetlab.models.quantize import CALIBRATION_IMAGES, calibration_sample, quantize_int8

    images = images or CALIBRATION_IMAGES
    if scored.rt.device.type != "cpu":
        raise UserError("int8 evaluation runs on the CPU only (" + option("--device cpu", 'device="cpu"') + ")")
    sample = train.subset(torch.tensor(calibration_sample(len(train), images)))
    loader = make_eval_loader(sample, data_cfg, LoaderSpec(64))
    return quantize_int8(fuse_bn(scored.model), [scored.normalizer(views[0]) for views, _ in loader],
                         reduce_range=reduce_range)
