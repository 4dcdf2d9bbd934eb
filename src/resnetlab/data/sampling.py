"""Which samples go in which batch, and the random generators that make every draw repeatable.

Every random choice in the data pipeline comes from a generator seeded by a tuple of integers
(purpose, seed, epoch, batch), never from global state. So the epoch permutation is a function
of (seed, epoch), the augmentation of a sample is a function of (seed, epoch, step, its place in
the global batch), and a run resumed at batch k, or run with another number of workers or
processes, sees the same data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from resnetlab.errors import UserError

# Purposes, so that e.g. the permutation of epoch 3 and the augmentation of batch 3 never share a seed.
PERMUTATION, AUGMENT, SPLIT, SYNTHETIC, STATS, SUBSET = 1, 2, 3, 4, 5, 6


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a hash (numpy SeedSequence) of the integer keys."""
    entropy = [int(k) % 2**63 for k in keys]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class BatchDraws:
    """The random draws behind one training batch's augmentation. They are made for the whole global
    batch (every process's samples, in the order `train_batches` deals them) and cut to this
    process's places, rank, rank + world_size, ...: a sample gets the same crop, flip and colour
    whatever the number of processes, so N processes train on the very images one process would.
    Each draw has one row per sample (`keep` drops the samples whose files could not be read)."""

    gen: torch.Generator
    size: int  # this process's batch as dealt, before any file is skipped
    rank: int = 0
    world_size: int = 1
    keep: torch.Tensor | None = None  # this process's samples that made it into the batch

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._mine(torch.rand(self.size * self.world_size, *shape, generator=self.gen, dtype=dtype))

    def randn(self, *shape: int) -> torch.Tensor:
        return self._mine(torch.randn(self.size * self.world_size, *shape, generator=self.gen))

    def randint(self, high: int) -> torch.Tensor:
        return self._mine(torch.randint(0, high, (self.size * self.world_size,), generator=self.gen))

    def kept(self, keep: torch.Tensor) -> BatchDraws:
        return replace(self, keep=keep)

    def __len__(self) -> int:
        return self.size if self.keep is None else len(self.keep)

    def _mine(self, drawn: torch.Tensor) -> torch.Tensor:
        mine = drawn[self.rank::self.world_size]
        return mine if self.keep is None else mine[self.keep]


def batch_draws(keys: tuple, batch: int, size: int) -> BatchDraws:
    """The draws of training batch `batch` for keys (seed, epoch, rank, world_size). The generator's
    key ends in 0, where it once held the rank: one process draws exactly what it always drew, but in
    a batch that lost an unreadable file, where the others now keep their own draws."""
    seed, epoch, rank, world_size = keys
    check_rank(rank, world_size)
    return BatchDraws(generator(AUGMENT, seed, epoch, batch, 0), size, rank, world_size)


def as_draws(draws: BatchDraws | torch.Generator, size: int) -> BatchDraws:
    """A generator is one process's draws for a batch of `size` (the augmentations' public form)."""
    if isinstance(draws, torch.Generator):
        return BatchDraws(draws, size)
    if len(draws) != size:
        raise ValueError(f"draws for {len(draws)} samples given for a batch of {size}")
    return draws


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, balance_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Sample indices of this rank's training batches for one epoch: (num_batches, batch_size).

    One permutation of all n samples per (seed, epoch) is shared by every rank; the first
    num_batches * batch_size * world_size entries are dealt out round-robin, so ranks are disjoint
    and equally long. The remainder (< batch_size * world_size samples, different every epoch)
    is dropped, like drop_last=True. With balance_labels (data.balance=sampler) the epoch is
    instead a class-balanced draw with replacement (`balanced_draw`) of the same length, also a
    function of (seed, epoch) alone, so a resumed run sees the same batches.
    """
    check_rank(rank, world_size)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    per_step = batch_size * world_size
    num_batches = n // per_step
    if num_batches == 0:
        raise UserError(f"the training set has {n} images, fewer than one batch of {batch_size} x "
                        f"{world_size} process(es); lower the batch size or add data")
    gen = generator(PERMUTATION, seed, epoch)
    if balance_labels is None:
        perm = torch.randperm(n, generator=gen)[: num_batches * per_step]
    else:
        perm = balanced_draw(balance_labels, num_batches * per_step, gen)
    return perm.view(num_batches * batch_size, world_size)[:, rank].reshape(num_batches, batch_size)


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """This rank's evaluation batches: the exact shard rank, rank + world_size, ... of 0..n-1.

    Shards are disjoint and together cover every sample once, so per-rank correct counts can be
    summed directly. Ranks may differ by one batch (and the last batch may be short).
    """
    check_rank(rank, world_size)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    return list(torch.arange(rank, n, world_size).split(batch_size))


def balanced_draw(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """`size` sample indices drawn with replacement, each class equally likely, then a uniform
    member of it: the same distribution as weights 1 / count(class) (PyTorch's
    WeightedRandomSampler), in O(n) and without torch.multinomial's 2**24-category limit."""
    counts = torch.bincount(labels)
    present = counts.nonzero().flatten()
    order = torch.argsort(labels, stable=True)  # sample indices grouped by class
    starts = torch.cumsum(counts, 0) - counts
    cls = present[torch.randint(len(present), (size,), generator=gen)]
    member = (torch.rand(size, generator=gen, dtype=torch.float64) * counts[cls]).long()
    return order[starts[cls] + member]


def holdout(labels: torch.Tensor, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices for data.val_size: a count is drawn at random over the split
    (`split_indices`, the paper's 45k/5k); a fraction is stratified (`stratified_split`)."""
    if isinstance(val_size, float):
        return stratified_split(labels, val_size, seed)
    keep, held = split_indices(len(labels), val_size, seed)
    return keep_one_per_class(labels, keep, held)


def keep_one_per_class(labels: torch.Tensor, keep: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held) with the largest held index of each class the draw took whole handed back to training: a
    count drawn at random over all classes can hold out every image of a rare one, which then trained on
    nothing without a word. Draws that left each class an image are returned as they were (runs repeat)."""
    gone = torch.bincount(labels[keep], minlength=len(torch.bincount(labels))) == 0
    if not bool(gone[labels[held]].any()):
        return keep, held
    back = torch.stack([held[labels[held] == c].max() for c in gone.nonzero().flatten().tolist()
                        if bool((labels[held] == c).any())])
    returned = torch.isin(held, back)
    return torch.cat([keep, back]).sort().values, held[~returned]


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, val) split holding out round(fraction * n) samples, each class in
    proportion to its count (largest remainder), but never a class's last training sample; both
    sorted ascending. The members of each class are chosen by a permutation seeded by `seed`."""
    n = len(labels)
    if not 0 < fraction < 1:
        raise UserError(f"data.val_size={fraction}: a fraction must be in (0, 1)")
    counts = torch.bincount(labels)
    quota = torch.minimum(class_quotas(counts, int(fraction * n + 0.5)), (counts - 1).clamp(min=0))
    if int(quota.sum()) == 0:
        raise UserError(f"data.val_size={fraction} of {n} training images holds out none (every class needs an image "
                        "left to train on); add images or set data.val_size=0 for no validation split")
    perm = torch.randperm(n, generator=generator(SPLIT, seed))
    shuffled = labels[perm]
    held = torch.cat([perm[shuffled == c][: int(q)] for c, q in enumerate(quota)]).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().flatten(), held


def class_quotas(counts: torch.Tensor, size: int) -> torch.Tensor:
    """`size` seats shared among classes in proportion to their counts: rounded down, the leftover
    seats going to the classes with the largest remainders, so a balanced dataset stays balanced."""
    exact = counts.double() * size / counts.sum()
    quota = exact.floor().long()
    leftover = size - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:leftover]] += 1
    return quota


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, val) index split of range(n) by seed; both sorted ascending."""
    if val_size < 0:
        raise UserError(f"data.val_size must be >= 0, got {val_size}")
    if val_size >= n:
        raise UserError(f"data.val_size={val_size} leaves no training images (train has {n}); "
                        f"set data.val_size below {n}, or a fraction such as data.val_size=0.2 (0 = no validation split)")
    perm = torch.randperm(n, generator=generator(SPLIT, seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of `size` samples drawn by seed, each class in proportion to its count.

    Class quotas are size * count / total rounded down, the leftover seats going to the classes
    with the largest remainders, so a balanced dataset stays balanced (CIFAR: size / 10 per class).
    """
    n = len(labels)
    if not 0 < size <= n:
        raise UserError(f"data.train_size must be between 1 and the {n} training images, got {size}")
    quota = class_quotas(torch.bincount(labels), size)
    perm = torch.randperm(n, generator=generator(SUBSET, seed))
    shuffled = labels[perm]
    chosen = [perm[shuffled == c][: int(q)] for c, q in enumerate(quota)]
    return torch.cat(chosen).sort().values


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not valid for world size {world_size}")
