"""The two dataset kinds every source becomes.

- ArrayDataset: all images in memory as one uint8 tensor (CIFAR, synthetic, small-image folders).
  Batches are gathered and augmented as whole tensors, on the CPU or on the GPU.
- FileDataset: image paths decoded on demand (folders of large images, e.g. ImageNet), in
  worker processes, one sample at a time for the size-dependent part.

Both carry int64 labels and the class names (index = label), can be subset by indices and
relabelled, and make their own batch source for the loaders (`batch_source`).
"""
from __future__ import annotations

import os
import sys
import unicodedata
from contextlib import closing

import torch
import torch.nn.functional as F

from resnetlab.config import DataConfig
from resnetlab.errors import UserError, breaks_lines, count

from .batches import ArrayBatches, FileBatches
from .sampling import STATS, eval_batches, generator


class ArrayDataset:
    """uint8 images (N, 3, H, W) and int64 labels (N,), kept in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self._cache: dict = {}  # (device, pad) -> (images, labels) placed and padded once

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, indices: torch.Tensor) -> "ArrayDataset":
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes)

    def relabelled(self, labels: torch.Tensor, classes: list[str]) -> "ArrayDataset":
        return ArrayDataset(self.images, labels, classes)

    def where(self) -> str:
        """Where the images live, for one-line descriptions."""
        return "x".join(map(str, self.image_size)) + " in memory"

    def batch_source(self, cfg: DataConfig, batches: list, first: int = 0, keys: tuple = (),
                     protocol: str | None = None) -> ArrayBatches:
        """Batches gathered and augmented as whole tensors (training with keys = (seed, epoch, rank,
        world_size), evaluation with a protocol)."""
        return ArrayBatches(self, cfg, batches, first, keys, protocol)

    def stats_batches(self, cfg: DataConfig, seed: int = 0):
        """The images the normaliser's statistics are fitted on: every one, in uint8 chunks."""
        return self.images.split(2048)

    def placed(self, device: torch.device, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (zero-padded by `pad` on each side) and labels on `device`, made once and kept."""
        key = (str(device), pad)
        if key not in self._cache:
            images = self.images.to(device)
            if pad:
                images = F.pad(images, (pad, pad, pad, pad)).contiguous()
            self._cache[key] = (images, self.labels.to(device))
        return self._cache[key]


class FileDataset:
    """Image files decoded on demand; labels are int64, one per path.

    Files that turn out unreadable while decoding (data.skip_bad) are `unreadable` (path -> reason)
    as soon as a batch meets them (a run's data.json lists them), and warned about once each by the
    loaders (`reported_bad` remembers which, across epochs) unless warn_bad is False, for callers
    that report them their own way (predict)."""

    def __init__(self, paths: list[str], labels: torch.Tensor, classes: list[str], warn_bad: bool = True):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self.warn_bad = warn_bad
        self.unreadable: dict[str, str] = {}
        self.reported_bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: torch.Tensor) -> "FileDataset":
        return FileDataset([self.paths[i] for i in indices.tolist()], self.labels[indices], self.classes, self.warn_bad)

    def relabelled(self, labels: torch.Tensor, classes: list[str]) -> "FileDataset":
        return FileDataset(self.paths, labels, classes, self.warn_bad)

    def where(self) -> str:
        return "image files"

    def batch_source(self, cfg: DataConfig, batches: list, first: int = 0, keys: tuple = (),
                     protocol: str | None = None) -> FileBatches:
        """Batches decoded file by file, in worker processes if the loader asks (see FileBatches)."""
        return FileBatches(self, cfg, batches, first, keys, protocol)

    def stats_batches(self, cfg: DataConfig, seed: int = 0):
        """The images the normaliser's statistics are fitted on: centre views, at the training crop
        size, of up to data.stats_images files (a seeded sample). Files found unreadable on the way
        (data.skip_bad) are this dataset's from then on: recorded, and warned about once."""
        n = min(len(self), cfg.stats_images)
        sample = self.subset(torch.randperm(len(self), generator=generator(STATS, seed))[:n].sort().values)
        source = sample.batch_source(cfg, eval_batches(n, 64, 0, 1), protocol="center")
        try:
            with closing(source.iterate(0, torch.device("cpu"), [])) as batches:
                yield from (views[0] for views, _ in batches)
        finally:
            self.unreadable.update(sample.unreadable)
            self.reported_bad |= sample.reported_bad


def match_classes(dataset, classes: list[str], source: str, aliases: list[str] | None = None):
    """`dataset` with its labels renumbered to `classes` (a model's) by name: a folder may hold a
    subset of them, in any order. aliases: other names of the same classes, position for position
    (ImageNet's WordNet ids). A class the model does not know is an error naming it."""
    if list(dataset.classes) == list(classes):
        return dataset
    index = {class_key(name): i for names in (classes, aliases or []) for i, name in enumerate(names)}
    unknown = [name for name in dataset.classes if class_key(name) not in index]
    if unknown:
        shown = lambda names: ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")  # noqa: E731
        raise UserError(f"{source} has {count(len(unknown), 'class')} the model does not know: "
                        f"{shown(unknown)}; its {len(classes)} classes are {shown(list(classes))}")
    labels = torch.tensor([index[class_key(name)] for name in dataset.classes])[dataset.labels]
    return dataset.relabelled(labels, classes)


def check_class_names(names: list[str], where) -> None:
    """Class names go to JSON, CSV, plots and stdout: a folder name that is not UTF-8 (read with
    surrogates) or holds a control character failed late there, so it is refused up front. A UTF-8
    name read by a process whose file names are not UTF-8 (PYTHONUTF8=0 in the C locale) says so."""
    odd = next((n for n in names if breaks_lines(n)), None)
    if odd is None:
        return
    raw = os.fsencode(odd)
    try:
        utf8 = not breaks_lines(raw.decode("utf-8"))
    except UnicodeDecodeError:
        utf8 = False
    if utf8 and sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        raise UserError(f"class folder {raw.decode('utf-8')!r} in {where}: this process reads file names as "
                        f"{sys.getfilesystemencoding()} (the locale's encoding); run it with a UTF-8 locale "
                        "(LANG=C.UTF-8) or PYTHONUTF8=1")
    raise UserError(f"class folder {raw!r} in {where}: its name is not valid UTF-8 or holds a control character; "
                    "rename the folder (its name is the class name)")


def class_key(name: str) -> str:
    """A class name as names are compared: a folder copied from a Mac keeps its names decomposed (NFD),
    and "café" there and "café" typed here are one class."""
    return unicodedata.normalize("NFC", name)


def case_twins(names: list[str]) -> list[list[str]]:
    """Groups of class names equal but for case or for whitespace at their ends (after class_key):
    `Cat/` and `cat/` are two classes, and cannot both exist on macOS or Windows file systems; `cat /`
    beside `cat/` (a space typed or pasted at the end, invisible in most listings) is two as well. Almost
    always a merge mistake."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(class_key(name).strip().casefold(), []).append(name)
    return [group for group in groups.values() if len(group) > 1]
