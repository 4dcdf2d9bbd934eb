"""Training and evaluation loaders: deterministic, resumable, sharded across ranks.

make_train_loader(...) yields (x, y): x uint8 (B, 3, S, S) augmented, y int64 (B,), on `device`.
make_eval_loader(...) yields (views, y): views a list of uint8 (B, 3, h, w), one per test view.

In-memory datasets are gathered and augmented as whole batches where they live (the GPU, when
device is cuda: the uint8 data is copied there once). File datasets are decoded in `workers`
processes (0 = in this process), in pinned memory when the device is a GPU.

Training: one permutation per (seed, epoch) dealt round-robin to ranks, drop-last, so every rank
has len(loader) full batches of disjoint samples. Evaluation: exact shards (rank r gets samples
r, r + world_size, ...), no padding, so summed per-rank counts are exact; ranks may differ by one
batch, so do not run a collective per batch. Unreadable files are an error, or with
data.skip_bad dropped from their batch (which is then shorter) and listed in loader.skipped.
"""
from __future__ import annotations

import warnings

import torch

from resnetlab.config import DataConfig
from resnetlab.errors import ResnetlabWarning, UserError

from .batches import PROTOCOLS, FileBatches, array_eval_views, array_train_batch, one_cpu_thread
from .datasets import ArrayDataset, FileDataset
from .sampling import AUGMENT, eval_batches, generator, train_batches

AUGMENTS = ("cifar", "imagenet", "rrc", "none")


class TrainLoader:
    """One epoch of one rank's training batches; len() counts them all, iteration starts at
    start_batch. Batch i is the same whatever start_batch, workers or device."""

    def __init__(self, dataset, cfg: DataConfig, batch_size: int, seed: int, epoch: int, start_batch: int,
                 rank: int, world_size: int, workers: int, device):
        check_augment(dataset, cfg)
        self.dataset, self.cfg, self.seed, self.epoch, self.rank = dataset, cfg, seed, epoch, rank
        self.batches = train_batches(len(dataset), batch_size, seed, epoch, rank, world_size,
                                     dataset.labels if cfg.balance == "sampler" else None)
        if not 0 <= start_batch <= len(self.batches):
            raise UserError(f"start_batch {start_batch} is outside this epoch's {len(self.batches)} batches")
        self.start_batch, self.workers, self.device = start_batch, check_workers(workers), torch.device(device)
        self.skipped: list[tuple[str, str]] = []  # unreadable files dropped (data.skip_bad)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if isinstance(self.dataset, ArrayDataset):
            for i in range(self.start_batch, len(self.batches)):
                gen = generator(AUGMENT, self.seed, self.epoch, i, self.rank)
                with one_cpu_thread(self.device):
                    batch = array_train_batch(self.dataset, self.cfg, self.batches[i], self.device, gen)
                yield batch
            return
        source = FileBatches(self.dataset, self.cfg, list(self.batches), self.start_batch,
                             (self.seed, self.epoch, self.rank))
        try:
            yield from iterate_files(source, self.workers, self.device, self.cfg.skip_bad, self.skipped)
        finally:
            report_skipped(self.dataset, self.skipped)


class EvalLoader:
    """This rank's exact shard (samples rank, rank + world_size, ...) in batches; per-rank counts
    add up to the dataset exactly, so the engine can all-reduce sums without weights or masks."""

    def __init__(self, dataset, cfg: DataConfig, batch_size: int, protocol: str, rank: int, world_size: int,
                 workers: int, device):
        if protocol not in PROTOCOLS:
            raise UserError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.dataset, self.cfg, self.protocol = dataset, cfg, protocol
        self.batches = eval_batches(len(dataset), batch_size, rank, world_size)
        self.num_samples = sum(len(b) for b in self.batches)
        self.workers, self.device = check_workers(workers), torch.device(device)
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if isinstance(self.dataset, ArrayDataset):
            for idx in self.batches:
                with one_cpu_thread(self.device):
                    views = array_eval_views(self.dataset, self.cfg, idx, self.device, self.protocol)
                yield views
            return
        source = FileBatches(self.dataset, self.cfg, self.batches, protocol=self.protocol)
        try:
            yield from iterate_files(source, self.workers, self.device, self.cfg.skip_bad, self.skipped)
        finally:
            report_skipped(self.dataset, self.skipped)


def make_train_loader(dataset, cfg: DataConfig, batch_size: int, seed: int = 0, epoch: int = 0,
                      start_batch: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                      device="cpu") -> TrainLoader:
    return TrainLoader(dataset, cfg, batch_size, seed, epoch, start_batch, rank, world_size, workers, device)


def make_eval_loader(dataset, cfg: DataConfig, batch_size: int, protocol: str = "center", rank: int = 0,
                     world_size: int = 1, workers: int = 0, device="cpu") -> EvalLoader:
    return EvalLoader(dataset, cfg, batch_size, protocol, rank, world_size, workers, device)


def iterate_files(source: FileBatches, workers: int, device: torch.device, skip_bad: bool, skipped: list):
    """Batches of a FileBatches source, in worker processes if asked, moved to `device`."""
    if workers > 0:
        items = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=device.type == "cuda", worker_init_fn=_one_thread)
    else:
        items = (source[j] for j in range(len(source)))
    for x, y, bad in items:
        if bad and not skip_bad:
            path, reason = bad[0]
            raise UserError(f"{path}: {reason}; remove it or set data.skip_bad=true to skip bad files")
        skipped += bad
        if x is None:
            continue
        if isinstance(x, list):
            yield [v.to(device, non_blocking=True) for v in x], y.to(device, non_blocking=True)
        else:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


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


def check_augment(dataset, cfg: DataConfig) -> None:
    if cfg.augment not in AUGMENTS:
        raise UserError(f"unknown data.augment {cfg.augment!r}; choose one of {', '.join(AUGMENTS)}")
    if not isinstance(dataset, (ArrayDataset, FileDataset)):
        raise TypeError(f"expected an ArrayDataset or FileDataset, got {type(dataset).__name__}")


def check_workers(workers: int) -> int:
    if workers < 0:
        raise UserError(f"workers (image-decoding processes) must be >= 0, got {workers}")
    return workers


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers are processes; threads inside them would oversubscribe
