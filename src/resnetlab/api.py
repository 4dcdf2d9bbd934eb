"""Inference in one line of Python:

    import resnetlab
    model = resnetlab.load("runs/my1")              # a run directory (its best.pt) or a checkpoint file
    model.predict("photo.jpg")                       # Prediction(source='photo.jpg', label='cat', index=0, prob=0.93, ...)
    model.predict(["a.jpg", pil_image, "folder/"])   # a list in, a list out; folders give every image in them

A thin front end to `inference.predictor.Predictor`, the path `resnetlab predict` takes: the model,
classes and preprocessing (input size, resize, normaliser) come from the checkpoint, BatchNorm is
folded into the convolutions, and a prediction equals what `resnetlab eval` scored for that file.
A PIL image is preprocessed exactly as the file it was opened from (EXIF rotation included).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from resnetlab.errors import UserError, expect_count, expect_type


@dataclass(frozen=True)
class ClassScore:
    """One class of a Prediction's top: its name, output index and probability."""

    label: str  # class name
    index: int  # output index of the model (position in its classes)
    prob: float  # softmax probability


@dataclass(frozen=True)
class Prediction:
    """One image: its most probable class and the k most probable, best first."""

    source: str  # the file, or "image N" for the N-th (0-based) PIL image of the call
    label: str
    index: int
    prob: float
    top: tuple[ClassScore, ...]


class Classifier:
    """A trained model ready to classify images with its own preprocessing (`resnetlab.load`)."""

    def __init__(self, predictor):
        self.predictor = predictor

    @property
    def classes(self) -> list[str]:
        """The class names in output order (a copy: changing it changes nothing)."""
        return list(self.predictor.classes)

    @property
    def input_size(self) -> int:
        """The side of the square the model sees, in pixels (its training crop)."""
        return self.predictor.data_cfg.image_size

    def __repr__(self) -> str:
        names = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
        return (f"Classifier({len(self.classes)} classes: {names}; {self.input_size} px; "
                f"{self.predictor.rt.device} {self.predictor.precision}; from {self.predictor.source})")

    def predict(self, images, topk: int = 5, *, protocol: str = "center", batch_size: int = 64,
                skip_bad: bool = False):
        """A path or a PIL image -> one Prediction; a list (or a folder) -> a list of them, in order.

        topk: how many classes `top` holds (at most the number of classes). protocol: center (one
        centre crop) | flip (it and its mirror) | 10crop | multiscale, as in `resnetlab eval`. An unreadable file raises a
        UserError naming it, or with skip_bad=True gives None in its place.
        """
        topk, batch_size = expect_count("topk", topk), expect_count("batch_size", batch_size)
        expect_type(skip_bad, bool, "skip_bad takes True or False")  # "no" is truthy: it skipped
        items, single = image_items(images)
        results = self._predict(items, min(topk, len(self.classes)), protocol, batch_size, skip_bad)
        return results[0] if single else results

    def _predict(self, items: list, k: int, protocol: str, batch_size: int, skip_bad: bool) -> list:
        pil = [i for i, item in enumerate(items) if isinstance(item, Image.Image)]
        names = [item if isinstance(item, str) else f"image {pil.index(i)}" for i, item in enumerate(items)]
        out: list[Prediction | None] = [None] * len(items)
        for views, idx in self.predictor.batches(items, protocol, batch_size):
            probs, labels = self.predictor.probs(views).topk(k, dim=1)
            for i, p, c in zip(idx.tolist(), probs.tolist(), labels.tolist()):
                top = tuple(ClassScore(self.classes[j], j, q) for j, q in zip(c, p))
                out[i] = Prediction(names[i], top[0].label, top[0].index, top[0].prob, top)
        missing = [i for i, result in enumerate(out) if result is None]
        if missing and not skip_bad:
            reason = dict(self.predictor.failed).get(str(items[missing[0]]), "could not be read")
            more = f" (and {len(missing) - 1} more unreadable)" if len(missing) > 1 else ""
            raise UserError(f"{names[missing[0]]}: {reason}{more}; "
                            "predict(..., skip_bad=True) gives None for unreadable images")
        return out


def image_items(images) -> tuple[list, bool]:
    """(the paths and PIL images of `images`, folders expanded; whether it was one image, given alone)."""
    from resnetlab.inference.inputs import collect_images

    alone = isinstance(images, (Image.Image, str, os.PathLike))
    images = os.path.expanduser(images) if isinstance(images, (str, os.PathLike)) else images  # as a shell reads ~
    single = isinstance(images, Image.Image) or (alone and not Path(images).is_dir())  # a folder gives a list
    # bytes are iterable (as ints) and None or a number are not: refused here, not item by item
    if not alone and (isinstance(images, (bytes, bytearray)) or not isinstance(images, Iterable)):
        raise UserError(f"images must be a path, a folder, a PIL image or a list of them; got {type(images).__name__}")
    unordered = isinstance(images, (set, frozenset))  # in no defined order: which result is which image's?
    if unordered or isinstance(images, Mapping):  # a dict iterates over its keys
        why = "which has no order for the results to follow" if unordered else "whose keys would be taken for images"
        raise UserError("images must be a path, a folder, a PIL image or a list of them; got a "
                        f"{type(images).__name__}, {why}: pass a list")
    items = []
    for item in [images] if alone else list(images):
        if isinstance(item, Image.Image):
            items.append(item)
        elif isinstance(item, (str, os.PathLike)):
            item = os.path.expanduser(item)
            items += collect_images([str(item)]) if Path(item).is_dir() else [str(item)]
        else:
            raise UserError(f"predict takes image paths, folders or PIL images; got {type(item).__name__}")
    return items, single


def load(source, device: str = "auto", precision: str = "auto") -> Classifier:
    """The model of a run directory (its best.pt, else last.pt) or a checkpoint file, ready to
    predict. device: auto | cpu | cuda | cuda:N. precision auto: the fastest path whose answers
    agree with fp32's (inference.fastpath: compiled bf16 on CPUs with AMX or AMD's AVX-512 BF16,
    compiled once per checkpoint and machine; folded fp32 elsewhere); fp32: exact fp32."""
    from resnetlab.engine.runtime import PRECISIONS
    from resnetlab.inference.predictor import Predictor

    if precision not in ("auto", *PRECISIONS):
        int8 = (" int8 needs calibration images and is not offered by resnetlab.load: use `resnetlab predict "
                "RUN_DIR IMAGES --precision int8 --calibrate FOLDER`") if precision == "int8" else ""
        raise UserError(f"precision {precision!r}: choose one of {', '.join(('auto', *PRECISIONS))}.{int8}")
    return Classifier(Predictor.from_checkpoint(source, device=device, precision=precision))
