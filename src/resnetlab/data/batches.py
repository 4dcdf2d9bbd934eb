"""Making one batch: the per-batch work of the loaders, for in-memory arrays and for image files.

FileBatches is a picklable map-style dataset whose item j is the whole batch j (decoded and
cropped per sample, flipped and lit as a batch), so torch's DataLoader can build batches in
worker processes while the random draws stay a function of (seed, epoch, batch) and the sample's
place in the global batch alone (`sampling.BatchDraws`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.config import DataConfig
from resnetlab.errors import ResnetlabWarning, UserError

from .augment import crop_flip, lighting, multiscale_sides, random_flip, resize_batch, resized_crops, ten_crop
from .decode import BadImage, center_box, decode_crops, resized_shape, rrc_box, scale_box
from .sampling import BatchDraws, batch_draws
from .views import ViewGroup
from .workers import worker_items, workers_that_fit

if TYPE_CHECKING:  # the datasets make their batch sources from here
    from .datasets import ArrayDataset, FileDataset

CIFAR_PAD = 4  # He et al. Sec. 4.2: 4 pixels padded on each side, a 32x32 crop sampled
RRC_TRIES = 10


def array_train_batch(data: ArrayDataset, cfg: DataConfig, idx: torch.Tensor, device, draws: BatchDraws) -> tuple:
    """Augmented uint8 images and labels of data[idx], on `device` (where the data is kept).
    cifar/none work at the stored size, then resize to cfg.image_size if that differs (e.g. CIFAR
    at 224 px for an ImageNet model), so memory holds only the small originals; imagenet/rrc
    windows are cut and resized straight to cfg.image_size."""
    if cfg.augment == "cifar":
        padded, labels = data.placed(device, CIFAR_PAD)
        x = crop_flip(padded, idx, data.image_size[0], draws)
    else:
        images, labels = data.placed(device)
        x = images[idx.to(images.device)]
    if cfg.augment in ("imagenet", "rrc"):
        h, w = data.image_size
        boxes = train_boxes(cfg, w, h, train_draws(draws))
        flip = draws.rand() < 0.5
        x = resized_crops(x, torch.from_numpy(boxes), cfg.image_size, flip)
        return (lighting(x, cfg.lighting, draws) if cfg.lighting > 0 else x), labels[idx.to(labels.device)]
    return resize_batch(x, cfg.image_size), labels[idx.to(labels.device)]


def train_draws(draws: BatchDraws) -> np.ndarray:
    """The uniforms behind each image's crop window: (n, RRC_TRIES, 4) float64."""
    return draws.rand(RRC_TRIES, 4, dtype=torch.float64).numpy()


def train_boxes(cfg: DataConfig, w: int, h: int, u: np.ndarray) -> np.ndarray:
    """Crop windows (n, 4) of w x h images for augment imagenet (scale) or rrc, from draws u."""
    if cfg.augment == "imagenet":
        side = cfg.scale_min + np.floor(u[:, 0, 0] * (cfg.scale_max - cfg.scale_min + 1))
        return scale_box(w, h, side, cfg.image_size, u[:, 0, 1], u[:, 0, 2])
    return rrc_box(w, h, u)


def array_eval_views(data: ArrayDataset, cfg: DataConfig, idx: torch.Tensor, device, protocol: str) -> tuple:
    """Evaluation views of data[idx]: the image (flip: and its mirror); or 10 crops of the
    training-padded image (corners, centre, flips), resized by data.image_size / stored size; or
    (multiscale) the whole images, shorter side at each of multiscale_sides, with their mirrors."""
    images, labels = data.placed(device)
    x = images[idx.to(images.device)]
    native = x.shape[-1]
    if protocol == "10crop":
        views = [resize_batch(v, cfg.image_size) for v in ten_crop(F.pad(x, (CIFAR_PAD,) * 4), native)]
    elif protocol == "multiscale":
        h, w = x.shape[2:]
        rows = torch.arange(len(x), device=x.device)
        views = [ViewGroup(resize_batch(x, resized_shape(w, h, side)[::-1]), rows, mirror=True)
                 for side in multiscale_sides(cfg.image_size)]
    else:
        views = [resize_batch(x, cfg.image_size)]
    if protocol == "flip":
        views.append(views[0].flip(3))
    return views, labels[idx.to(labels.device)]


@dataclass
class BatchSource:
    """Batches first, first + 1, ... of `batches` of one dataset; its kind's `iterate` makes them."""

    data: ArrayDataset | FileDataset
    cfg: DataConfig
    batches: list  # of index tensors
    first: int = 0
    keys: tuple = ()  # (seed, epoch, rank, world_size) for training batches; () for evaluation
    protocol: str | None = None  # evaluation protocol; None = training


class ArrayBatches(BatchSource):
    """In-memory batches, each gathered and augmented as a whole tensor where the data is placed
    (no worker processes)."""

    def iterate(self, workers: int, device: torch.device, skipped: list):
        """(x, y) training batches or (views, y) evaluation batches on `device`; nothing is ever skipped."""
        for i in range(self.first, len(self.batches)):
            with one_cpu_thread(device):
                if self.protocol is None:
                    draws = batch_draws(self.keys, i, len(self.batches[i]))
                    batch = array_train_batch(self.data, self.cfg, self.batches[i], device, draws)
                else:
                    batch = array_eval_views(self.data, self.cfg, self.batches[i], device, self.protocol)
            yield batch


class FileBatches(BatchSource, torch.utils.data.Dataset):
    """Item j = batch number first + j of `batches`: (views or image, labels, [(path, reason)])."""

    def __len__(self) -> int:
        return len(self.batches) - self.first

    def __getitem__(self, j: int):
        with one_cpu_thread(torch.device("cpu")):
            return self._batch(self.first + j)

    def iterate(self, workers: int, device: torch.device, skipped: list):
        """The batches, decoded in `workers` processes if asked, moved to `device`. An unreadable
        file is an error, or with data.skip_bad dropped and added to `skipped` (warned about once).
        At most one process per usable core: more only take turns (and torch warns about each loader)."""
        from resnetlab.cpu import usable_cores

        workers = min(workers, usable_cores(), len(self))
        if workers > 0:  # as many as /dev/shm has room for the batches in flight (see data.workers)
            workers = workers_that_fit(workers, max(len(b) for b in self.batches) * self._image_bytes())
        items = worker_items(self, workers, device.type == "cuda") if workers > 0 else (self[j] for j in range(len(self)))
        try:
            for x, y, bad in items:
                if bad and not self.cfg.skip_bad:
                    path, reason = bad[0]
                    fix = ("it was listed when the data was read: put it back" if reason.startswith("no such file")
                           else "remove it")  # deleted while a run trains: "remove it" made no sense
                    raise UserError(f"{path}: {reason}; {fix} or set data.skip_bad=true to skip bad files")
                skipped += bad
                self.data.unreadable.update(bad)  # recorded at once: a checkpoint may come before the epoch ends
                if x is None:
                    continue
                if isinstance(x, list):
                    yield [v.to(device, non_blocking=True) for v in x], y.to(device, non_blocking=True)
                else:
                    yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        finally:
            items.close()  # the workers end now, not when the generator is collected
            report_skipped(self.data, skipped)

    def _image_bytes(self) -> int:
        """Bytes of one image's views in a batch a worker hands over (uint8: 3 per pixel)."""
        size = self.cfg.image_size
        if self.protocol in (None, "center", "flip"):
            return 3 * size * size
        if self.protocol == "10crop":  # whole images at eval_resize, most up to 4:3 (whole_box: at most 4:1)
            return 3 * self.cfg.eval_resize * self.cfg.eval_resize * 4 // 3
        # multiscale: whole images at each side, up to 4:3; their mirrors are made where they are scored
        return sum(3 * side * side * 4 // 3 for side in multiscale_sides(size))

    def _batch(self, i: int):
        idx = self.batches[i].tolist()
        if self.protocol is None:
            draws = batch_draws(self.keys, i, len(idx))
            u = train_draws(draws)
            plans = [self._train_plan(u[k:k + 1]) for k in range(len(idx))]
        else:
            plans = [self._eval_plan()] * len(idx)
        views, labels, bad, kept = [], [], [], []
        for place, (k, plan) in enumerate(zip(idx, plans)):
            try:
                views.append(decode_crops(self.data.paths[k], plan, self.cfg.interpolation))
                labels.append(int(self.data.labels[k]))
                kept.append(place)
            except BadImage as err:
                bad.append((err.path, err.reason))
        y = torch.tensor(labels, dtype=torch.int64)
        if not views:
            return None, y, bad
        if self.protocol == "10crop":
            return ten_crop_each(views, self.cfg.image_size), y, bad
        if self.protocol == "multiscale":
            return shape_groups(views), y, bad
        stacked = [_stack([v[n] for v in views]) for n in range(len(views[0]))]
        if self.protocol is None:  # a skipped file's draws are left unused: the others keep their own
            return self._batch_augment(stacked[0], draws.kept(torch.tensor(kept)) if bad else draws), y, bad
        if self.protocol == "flip":
            stacked.append(stacked[0].flip(3))
        return stacked, y, bad

    def _train_plan(self, u: np.ndarray):
        size = self.cfg.image_size
        if self.cfg.augment in ("imagenet", "rrc"):
            return lambda w, h: [(tuple(train_boxes(self.cfg, w, h, u)[0]), (size, size))]
        return lambda w, h: [(center_box(w, h, size, size), (size, size))]  # cifar / none: then batched

    def _eval_plan(self):
        size = self.cfg.image_size
        # Match the training geometry: scale-augmented training sees crops of larger images, so
        # evaluation resizes to eval_resize first; cifar/none training resized to image_size.
        side = self.cfg.eval_resize if self.cfg.augment in ("imagenet", "rrc") else size
        if self.protocol in ("center", "flip"):  # flip: the centre view, mirrored after stacking
            return lambda w, h: [(center_box(w, h, side, size), (size, size))]
        sides = [side] if self.protocol == "10crop" else multiscale_sides(size)  # multiscale: fully-convolutional
        return lambda w, h: [(box, resized_shape(box[2] - box[0], box[3] - box[1], s))
                             for box in [whole_box(w, h)] for s in sides]

    def _batch_augment(self, x: torch.Tensor, draws: BatchDraws) -> torch.Tensor:
        if self.cfg.augment == "cifar":
            return crop_flip(F.pad(x, (CIFAR_PAD,) * 4), torch.arange(x.shape[0]), self.cfg.image_size, draws)
        if self.cfg.augment == "none":
            return x
        x = random_flip(x, draws)  # in place: x is this batch's own fresh tensor
        return lighting(x, self.cfg.lighting, draws) if self.cfg.lighting > 0 else x


MAX_WHOLE_ASPECT = 4  # whole-image views keep at most 4:1 of an image (nearly every photo is whole)


def whole_box(w: int, h: int) -> tuple:
    """The whole image for 10-crop and multi-scale views, or its centred part of MAX_WHOLE_ASPECT:1: a
    legal 1 x 2000 strip resized to a shorter side of 365 px was a 365 x 730,000 view, gigabytes for one image."""
    longest = MAX_WHOLE_ASPECT * min(w, h)
    if max(w, h) <= longest:
        return (0, 0, w, h)
    return ((w - longest) / 2, 0, (w + longest) / 2, h) if w > h else (0, (h - longest) / 2, w, (h + longest) / 2)


def report_skipped(dataset: FileDataset, skipped: list[tuple[str, str]], shown: int = 3) -> None:
    """One warning for the files skipped while decoding that this dataset has not reported yet
    (large images are checked only when decoded, so a bad one is met during training)."""
    new = list(dict.fromkeys(p for p, _ in skipped if p not in dataset.reported_bad))
    if not new or not dataset.warn_bad:
        return
    dataset.reported_bad.update(new)
    why = dict(skipped)[new[0]]
    warnings.warn(f"data.skip_bad: skipped {len(new)} unreadable file{'s' * (len(new) != 1)} while decoding "
                  f"({new[0]}: {why}{''.join(', ' + p for p in new[1:shown])}{', ...' if len(new) > shown else ''}); "
                  f"{len(dataset.reported_bad)} of {len(dataset)} files of this split skipped so far",
                  ResnetlabWarning, stacklevel=2)


def ten_crop_each(views: list, size: int) -> list[torch.Tensor]:
    """10-crop of each image (sizes differ per image), regrouped into 10 batches."""
    per_image = [ten_crop(torch.from_numpy(v[0]).permute(2, 0, 1)[None], size) for v in views]
    return [torch.cat([crops[n] for crops in per_image]) for n in range(10)]


def shape_groups(views: list) -> list[ViewGroup]:
    """Each image's multi-scale views (one (h, w, 3) array per side; shapes differ per image) as
    ViewGroups: per side, the images of one shape batched together (mirrored where scored)."""
    groups = []
    for n in range(len(views[0])):
        rows: dict = {}
        for row, arrays in enumerate(views):
            rows.setdefault(arrays[n].shape, []).append(row)
        groups += [ViewGroup(_stack([views[r][n] for r in same]), torch.tensor(same), mirror=True)
                   for same in rows.values()]
    return groups


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """(h, w, 3) uint8 arrays of one size -> (B, 3, h, w) contiguous uint8."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@contextmanager
def one_cpu_thread(device: torch.device):
    """Build batches on the CPU single-threaded: each op is a few milliseconds of memory traffic,
    and waking a second intra-op thread for each one cost ~10 ms per op on a busy 2-core machine
    (CIFAR loader: 30k -> 90k images/s; 224 px file batches: flip + lighting 0.3 s -> 0.03 s)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
