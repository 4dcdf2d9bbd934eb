"""Image folders in the ImageNet layout: ROOT/<split>/<class>/<image>.

Class index = position of the folder name in the sorted list of train/ class folders. Folders of
small images (every probed image <= SMALL_SIDE px, e.g. CIFAR as JPEG) are decoded once, at their
own size, into an in-memory uint8 array, cached as an .npz keyed by the file list, sizes and
mtimes, so later epochs and later runs never decode again. Large images stay files, decoded per
batch by the loaders.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.errors import UserError
from resnetlab.files import atomic_write

from .datasets import ArrayDataset
from .decode import BadImage, center_box, decode_crops

SMALL_SIDE = 64  # images no larger than this are cached in memory as arrays
PROBES = 32  # images whose headers decide small vs large
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
PARALLEL_MIN = 2000  # decode in worker processes when each gets at least this many files
IMAGE_EXTS = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
SKIP_HINT = "set data.skip_bad=true to skip bad files with a count"


def scan(split_dir: Path, classes: list[str] | None, skip_bad: bool):
    """(paths, labels, classes, skipped) for one split folder; classes=None means: this is train/."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} is not a directory; expected the layout ROOT/train/<class>/<image>")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        loose = sum(1 for f in split_dir.iterdir() if f.is_file())
        raise UserError(f"{split_dir} has no class folders ({loose} files directly inside); expected "
                        f"{split_dir}/<class>/<image>, one folder per class")
    if classes is None:
        classes = found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise UserError(f"{split_dir} has class folders not in train/: {', '.join(unknown[:5])}; "
                        f"every split must use train's classes")
    paths, labels, skipped = [], [], []
    for name in found:
        files, bad = _class_files(split_dir / name)
        if bad and not skip_bad:
            raise UserError(f"{bad[0][0]}: {bad[0][1]}; remove it or {SKIP_HINT}")
        skipped += bad
        if not files:
            if not skip_bad:
                raise UserError(f"class folder {split_dir / name} holds no images; add images, remove "
                                f"the folder, or {SKIP_HINT}")
            skipped.append((str(split_dir / name), "empty class folder"))
        paths += files
        labels += [classes.index(name)] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64), classes, skipped


def _class_files(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under a class folder (recursive, sorted); other non-hidden files are bad."""
    files, bad = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                files.append(path)
            else:
                bad.append((path, "not an image file (unknown extension)"))
    return files, bad


def small_side(paths: list[str]) -> int | None:
    """The common side of the images if evenly spaced probes are all at most SMALL_SIDE px (the
    most frequent probed side; other images are resized to it when cached), else None."""
    step = max(1, len(paths) // PROBES)
    sides = []
    for path in paths[::step][:PROBES]:
        try:
            with Image.open(path) as img:
                sides.append(max(img.size))
        except (OSError, SyntaxError, ValueError):
            continue  # reported (or skipped) when the file is decoded
    if not sides or max(sides) > SMALL_SIDE:
        return None
    return max(set(sides), key=lambda s: (sides.count(s), s))


def small_dataset(paths: list[str], labels: torch.Tensor, classes: list[str], size: int, root: Path,
                  cache_dir: Path, skip_bad: bool) -> tuple[ArrayDataset, dict]:
    """Decode small images into size x size arrays, through the .npz cache; info: counts."""
    prefix = len(str(root)) + 1  # scan() built every path as str(root / split / class / file)
    listing = [(p[prefix:], s.st_size, s.st_mtime_ns) for p, s in ((p, os.stat(p)) for p in paths)]
    key = json.dumps([CACHE_VERSION, listing, labels.tolist(), classes, size, skip_bad])
    key = hashlib.sha256(key.encode()).hexdigest()
    cache = cache_dir / f"{root.resolve().name}-{key[:20]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            images, keep, resized = z["images"], z["keep"], int(z["resized"])
    else:
        images, keep, resized = _decode_all(paths, size, skip_bad)
        _save_atomic(cache, images=images, keep=keep, resized=np.int64(resized))
    skipped = [(paths[i], "unreadable image") for i in np.flatnonzero(~keep)]
    data = ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2), labels[torch.from_numpy(keep)], classes)
    return data, {"cache": str(cache), "resized": resized, "skipped": skipped}


def _decode_all(paths: list[str], size: int, skip_bad: bool):
    """(N_ok, size, size, 3) uint8, keep mask over paths, number of images that needed resizing.
    Large lists are decoded by one process per CPU core, in contiguous chunks (order kept)."""
    procs = min(os.cpu_count() or 1, len(paths) // PARALLEL_MIN)
    if procs <= 1:
        return _decode_chunk(paths, size, skip_bad)
    bounds = np.linspace(0, len(paths), procs * 4 + 1).astype(int)
    chunks = [paths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.starmap(_decode_chunk, [(c, size, skip_bad) for c in chunks])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts))


def _decode_chunk(paths: list[str], size: int, skip_bad: bool):
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    keep = np.ones(len(paths), dtype=bool)
    resized = 0

    def plan(w: int, h: int):
        nonlocal resized
        if (w, h) == (size, size):
            return [((0, 0, w, h), (size, size))]
        resized += 1
        return [(center_box(w, h, size, size), (size, size))]

    for i, path in enumerate(paths):
        try:
            images[i] = decode_crops(path, plan)[0]
        except BadImage as err:
            if not skip_bad:
                raise UserError(f"{err}; remove it or {SKIP_HINT}") from None
            keep[i] = False
    return images[keep], keep, resized


def _save_atomic(path: Path, **arrays) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)
