"""Image folders: ROOT/<split>/<class>/<image> (the ImageNet layout) or ROOT/<class>/<image>.

`folder_layout` tells the two apart: "splits" when ROOT has train/, val/ or test/ holding class
folders, "classes" when it has only class folders (read as the training images, as Keras'
image_dataset_from_directory reads such a folder). Files whose extension is not an image's
(notes.txt, Thumbs.db, .DS_Store ...) are ignored and counted, as torchvision's ImageFolder ignores
them; an image file that cannot be decoded is an error (or, with data.skip_bad, skipped).

Class index = position of the folder name in the sorted list of train/ class folders. Folders of
small images (9 in 10 probed images <= SMALL_SIDE px, e.g. CIFAR as JPEG; small_side) are decoded once, at
their common size, into an in-memory uint8 array, cached as an .npz keyed by the file list, sizes,
mtimes and ctimes, so later epochs and later runs never decode again. Large images stay files, decoded per
batch by the loaders.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.errors import ResnetlabWarning, UserError
from resnetlab.files import StorageError

from .array_cache import cache_file, read_cache, save_cache
from .listing import IMAGE_EXTS, class_files, dir_keys, hidden
from .workers import STOP_SIGNALS
from .datasets import ArrayDataset, check_class_names, class_key
from .decode import BadImage, center_box, decode_crops, header_size

SMALL_SIDE = 64  # images no larger than this are cached in memory as arrays
PROBES = 32  # images whose headers decide small vs large
CACHE_VERSION = 7  # bump when decoding changes, so old caches are not reused (6: signed and 32-bit TIFFs; 7: the
# centre crop of a non-square small image is torchvision's, 419b34b)
PARALLEL_MIN = 2000  # decode in worker processes when each gets at least this many files
SKIP_HINT = "set data.skip_bad=true to skip bad files with a count"
SPLITS = ("train", "val", "test")


@dataclass
class FolderScan:
    """One split folder: image paths with their labels, and what was left out."""

    paths: list[str]
    labels: torch.Tensor  # int64, index into classes
    classes: list[str]
    skipped: list[tuple[str, str]]  # (path, reason): unreadable, with data.skip_bad
    ignored: list[str]  # files that are not images by extension


def folder_layout(root: Path) -> str | None:
    """"splits" (ROOT/train|val|test/<class>/: a folder named train, val or test is always a split),
    "classes" (ROOT/<class>/, no split level) or None (no subfolders)."""
    if any((root / split).is_dir() for split in SPLITS):
        return "splits"
    return "classes" if subfolders(root) else None


def subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    try:
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not hidden(d.name))
    except OSError as err:  # a split folder without read permission
        raise UserError(f"{folder}: cannot list the folder ({err.strerror or err}); fix its permissions") from None


def holds_images(folder: Path) -> bool:
    """Whether image files (by extension) lie directly in `folder`: a class folder's look, not a
    cache's or a run's."""
    try:
        return any(f.suffix.lower() in IMAGE_EXTS and not hidden(f.name) for f in folder.iterdir())
    except OSError:
        return False


def scan(split_dir: Path, classes: list[str] | None, skip_bad: bool) -> FolderScan:
    """One split folder; classes=None means: this is the training split, whose folders are the classes."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} is not a directory; expected the layout ROOT/train/<class>/<image>")
    found = subfolders(split_dir)
    if not found:
        loose = sum(1 for f in split_dir.iterdir() if f.is_file())
        raise UserError(f"{split_dir} has no class folders ({loose} files directly inside); expected "
                        f"{split_dir}/<class>/<image>, one folder per class")
    training = classes is None
    if training:
        classes = found
        check_class_names(found, split_dir)
    as_trained = {class_key(c): c for c in classes}
    if len(as_trained) < len(classes):  # two training folders of one name in two Unicode forms
        twin = next(c for c in classes if as_trained[class_key(c)] != c)
        raise UserError(f"{split_dir} has two class folders named {twin!r} (in two Unicode forms: {ascii(twin)} "
                        f"and {ascii(as_trained[class_key(twin)])}); merge them into one")
    unknown = [name for name in found if class_key(name) not in as_trained]
    if unknown:
        raise UserError(f"{split_dir} has class folders not in train/: {', '.join(unknown[:5])}; "
                        f"every split must use train's classes")
    paths, labels, skipped, ignored = [], [], [], []
    fence = dir_keys([split_dir, *Path(os.path.realpath(split_dir)).parents] + [split_dir / n for n in found])
    for name in found:
        files, bad, others = class_files(split_dir / name, fence)
        ignored += others
        if bad and not skip_bad:
            raise UserError(f"{bad[0][0]}: {bad[0][1]}; remove it or {SKIP_HINT}")
        skipped += bad
        if not files:
            if not skip_bad or training:  # skipping cannot help a training class: it would have no images
                raise UserError(f"class folder {split_dir / name} holds no images; add images or remove the folder"
                                + ("" if training else f", or {SKIP_HINT}"))
            skipped.append((str(split_dir / name), "empty class folder"))
        paths += files
        labels += [classes.index(as_trained[class_key(name)])] * len(files)
    loose = [str(f) for f in sorted(split_dir.iterdir()) if f.is_file() and not hidden(f.name)]
    ignored = loose + ignored  # files beside the class folders belong to no class
    return FolderScan(paths, torch.tensor(labels, dtype=torch.int64), classes, skipped, ignored)


def probed_sizes(paths: list) -> list[tuple[int, int]]:
    """(width, height) of up to PROBES images spread evenly over the list, from their headers; an
    unreadable file is left out (reported, or skipped, when it is decoded)."""
    sizes = (header_size(path) for path in paths[::max(1, len(paths) // PROBES)][:PROBES])
    return [size for size in sizes if size]


def small_side(paths: list) -> int | None:
    """The common side of the images (paths or PIL images) if at least 9 in 10 evenly spaced probes are at
    most SMALL_SIDE px (the most frequent small probed side; other images, larger ones too, are resized to it
    when cached, and said), else None: one photo among 60,000 8 px images made them all photos, decoded
    from disk every epoch at 64 px."""
    sides = [max(size) for size in probed_sizes(paths) if min(size)]  # an empty image must not set the others' side
    small = [s for s in sides if s <= SMALL_SIDE]
    if not sides or len(small) < 0.9 * len(sides):
        return None
    return max(set(small), key=lambda s: (small.count(s), s))


def small_dataset(paths: list[str], labels: torch.Tensor, classes: list[str], size: int, root: Path,
                  cache_dir: Path, skip_bad: bool, part: str = "train") -> tuple[ArrayDataset, dict]:
    """Decode small images into size x size arrays, through the .npz cache; info: counts. part: which
    of root's images they are (a split, a hold-out): a newer cache of the same part replaces its older."""
    prefix = len(str(root)) + 1  # scan() built every path as str(root / split / class / file)
    # ctime as well as mtime: a file replaced by one of the same size with its mtime kept (cp -p, rsync -t,
    # tar x) has a new ctime, which no tool sets. Moving the folder keeps the key (paths are relative).
    listing = [(p[prefix:], s.st_size, s.st_mtime_ns, s.st_ctime_ns) for p, s in ((p, os.stat(p)) for p in paths)]
    key = json.dumps([CACHE_VERSION, listing, labels.tolist(), classes, size, skip_bad])
    cache, origin = cache_file(cache_dir, root, hashlib.sha256(key.encode()).hexdigest(), part, size, skip_bad)
    cached = read_cache(cache, len(paths), size) if cache.is_file() else None
    if cached is not None:
        images, keep, resized, reasons = cached
    else:
        images, keep, resized, reasons = decode_all(paths, size, skip_bad)
        try:
            save_cache(cache, origin, images=images, keep=keep, resized=np.int64(resized),
                       reasons=np.array(reasons, dtype=str))
        except StorageError as err:  # a cache is a saving, not the point: train on what was just decoded
            cache, not_cached = None, err.reason
    if cache is None:
        warnings.warn(f"the decoded images are not cached in {cache_dir} ({not_cached}): the next run decodes "
                      "them again; set data.cache_dir=DIR (or RESNETLAB_CACHE) to name another folder", ResnetlabWarning,
                      stacklevel=2)
    skipped = list(zip((paths[i] for i in np.flatnonzero(~keep)), reasons))
    data = ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2), labels[torch.from_numpy(keep)], classes)
    return data, {"cache": str(cache) if cache else None, "resized": resized, "skipped": skipped}


def decode_all(paths: list[str], size: int, skip_bad: bool):
    """(N_ok, size, size, 3) uint8, keep mask over paths, number of images that needed resizing,
    why each dropped file could not be read.
    Large lists are decoded by one process per usable CPU core (a container's or taskset's share: the
    machine's count forked 25 processes onto a 2-core share of a 64-core node), in contiguous chunks."""
    from resnetlab.cpu import usable_cores

    procs = min(usable_cores(), len(paths) // PARALLEL_MIN)
    if procs <= 1:
        return _decode_chunk(paths, size, skip_bad)
    bounds = np.linspace(0, len(paths), procs * 4 + 1).astype(int)
    chunks = [paths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with decode_pool(procs) as pool:
        parts = pool.starmap(_decode_chunk, [(c, size, skip_bad) for c in chunks])
        pool.close()
        pool.join()  # the workers leave on their own; terminating them (the with's exit) is for errors
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts), sum((p[3] for p in parts), []))


def decode_pool(procs: int):
    """Forked worker processes for decode_all, with SIGTERM's default action and SIGINT ignored
    instead of the handlers they inherit. A training run decodes inside engine.signals.StopOnSignal,
    whose handler only records a signal, and Pool.terminate() stops its workers with SIGTERM: a
    worker keeping that handler can outlive it, and the parent then waits for it forever (a first
    run on a fresh machine hung in this decode, its parent in waitpid, one worker alive on the
    pool's lock). The workers are also closed and joined, not terminated, when all went well.
    Ctrl-C reaches the parent, which stops the run once the data is built. The signals stay blocked
    across the fork until each worker has set them: a Ctrl-C as one started was a traceback in it."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return multiprocessing.get_context("fork").Pool(procs, initializer=_default_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the parent stops once the data is built
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _decode_chunk(paths: list[str], size: int, skip_bad: bool):
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    keep = np.ones(len(paths), dtype=bool)
    resized, reasons = 0, []

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
            reasons.append(err.reason)
    return images[keep], keep, resized, reasons
