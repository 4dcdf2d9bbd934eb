"""Training and evaluation loaders: deterministic, resumable, sharded across ranks.

make_train_loader(dataset, cfg, LoaderSpec(...), seed=, epoch=) yields (x, y): x uint8
(B, 3, S, S) augmented (S: the epoch's side, see epoch_image_size), y int64 (B,), on spec.device.
make_eval_loader(dataset, cfg, LoaderSpec(...), protocol) yields (views, y): views a list of
uint8 (B, 3, h, w), one per test view (multiscale: ViewGroups, the images of one shape at one
scale, as whole images differ in shape; data/views.py).

Each dataset kind makes its own batch source (`batch_source`, data/batches.py): in-memory
datasets are gathered and augmented as whole batches where they live (the GPU, when device is
cuda: the uint8 data is copied there once). File datasets are decoded in spec.workers processes
(0 = in this process), in pinned memory when the device is a GPU.

Training: one permutation per (seed, epoch) dealt round-robin to ranks, drop-last, so every rank
has len(loader) full batches of disjoint samples. Evaluation: exact shards (rank r gets samples
r, r + world_size, ...), no padding, so summed per-rank counts are exact; ranks may differ by one
batch, so do not run a collective per batch. Unreadable files are an error, or with
data.skip_bad dropped from their batch (which is then shorter) and listed in loader.skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from resnetlab.config import PROTOCOLS, DataConfig
from resnetlab.errors import UserError

from .augment import resize_batch
from .batches import one_cpu_thread
from .sampling import eval_batches, train_batches

AUGMENTS = ("cifar", "imagenet", "rrc", "none")


@dataclass(frozen=True)
class LoaderSpec:
    """How one process reads a split: its batch size, its shard (rank of world_size), the
    image-decoding worker processes (file datasets; 0 = in this process) and where batches go."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    device: torch.device | str = "cpu"

    def __post_init__(self):
        if self.workers < 0:
            raise UserError(f"workers (image-decoding processes) must be >= 0, got {self.workers}")


class TrainLoader:
    """One epoch of one rank's training batches; len() counts them all, iteration starts at
    start_batch. Batch i is the same whatever start_batch, workers or device."""

    def __init__(self, dataset, cfg: DataConfig, spec: LoaderSpec, *, seed: int = 0, epoch: int = 0,
                 start_batch: int = 0):
        check_augment(dataset, cfg)
        self.dataset, self.cfg, self.spec, self.seed, self.epoch = dataset, cfg, spec, seed, epoch
        self.side = epoch_image_size(cfg, epoch)
        self.batches = train_batches(len(dataset), spec.batch_size, seed, epoch, spec.rank, spec.world_size,
                                     dataset.labels if cfg.balance == "sampler" else None)
        if not 0 <= start_batch <= len(self.batches):
            raise UserError(f"start_batch {start_batch} is outside this epoch's {len(self.batches)} batches")
        self.start_batch = start_batch
        self.skipped: list[tuple[str, str]] = []  # unreadable files dropped (data.skip_bad)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        source = self.dataset.batch_source(self.cfg, list(self.batches), self.start_batch,
                                           (self.seed, self.epoch, self.spec.rank, self.spec.world_size))
        device = torch.device(self.spec.device)
        for x, y in source.iterate(self.spec.workers, device, self.skipped):
            if self.side != self.cfg.image_size:  # progressive resizing: the same augmented crop, smaller
                with one_cpu_thread(device):
                    x = resize_batch(x, self.side)
            yield x, y


class EvalLoader:
    """This rank's exact shard (samples rank, rank + world_size, ...) in batches; per-rank counts
    add up to the dataset exactly, so the engine can all-reduce sums without weights or masks."""

    def __init__(self, dataset, cfg: DataConfig, spec: LoaderSpec, protocol: str = "center"):
        if protocol not in PROTOCOLS:
            raise UserError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.dataset, self.cfg, self.spec, self.protocol = dataset, cfg, spec, protocol
        self.batches = eval_batches(len(dataset), spec.batch_size, spec.rank, spec.world_size)
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        source = self.dataset.batch_source(self.cfg, self.batches, protocol=self.protocol)
        yield from source.iterate(self.spec.workers, torch.device(self.spec.device), self.skipped)


def make_train_loader(dataset, cfg: DataConfig, spec: LoaderSpec, *, seed: int = 0, epoch: int = 0,
                      start_batch: int = 0) -> TrainLoader:
    return TrainLoader(dataset, cfg, spec, seed=seed, epoch=epoch, start_batch=start_batch)


def make_eval_loader(dataset, cfg: DataConfig, spec: LoaderSpec, protocol: str = "center") -> EvalLoader:
    return EvalLoader(dataset, cfg, spec, protocol)


def epoch_image_size(cfg: DataConfig, epoch: int) -> int:
    """The training crop side of `epoch` (0-based): image_size scaled by data.progressive_scales while
    the list lasts (rounded, at least 1 px), then image_size."""
    scales = cfg.progressive_scales
    return max(1, round(scales[epoch] * cfg.image_size)) if epoch < len(scales) else cfg.image_size


def check_augment(dataset, cfg: DataConfig) -> None:
    if cfg.augment not in AUGMENTS:
        raise UserError(f"unknown data.augment {cfg.augment!r}; choose one of {', '.join(AUGMENTS)}")
    if not hasattr(dataset, "batch_source"):  # every dataset kind makes its own batches
        raise TypeError(f"expected a dataset with batch_source() (ArrayDataset, FileDataset), got {type(dataset).__name__}")
