"""Which samples go in which batch, and the random generators that make every draw repeatable.

Every random choice in the data pipeline comes from a generator seeded by a tuple of integers
(purpose, seed, epoch, batch, rank), never from global state. So the epoch permutation is a
function of (seed, epoch), the augmentation of batch i is a function of (seed, epoch, i, rank),
and a run resumed at batch k, or run with a different number of workers, sees the same data.
"""
from __future__ import annotations

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


def train_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Sample indices of this rank's training batches for one epoch: (num_batches, batch_size).

    One permutation of all n samples per (seed, epoch) is shared by every rank; the first
    num_batches * batch_size * world_size entries are dealt out round-robin, so ranks are disjoint
    and equally long. The remainder (< batch_size * world_size samples, different every epoch)
    is dropped, like drop_last=True.
    """
    check_rank(rank, world_size)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    per_step = batch_size * world_size
    num_batches = n // per_step
    if num_batches == 0:
        raise UserError(f"the training set has {n} images, fewer than one batch of {batch_size} x "
                        f"{world_size} process(es); lower the batch size or add data")
    perm = torch.randperm(n, generator=generator(PERMUTATION, seed, epoch))[: num_batches * per_step]
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


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, val) index split of range(n) by seed; both sorted ascending."""
    if val_size < 0:
        raise UserError(f"data.val_size must be >= 0, got {val_size}")
    if val_size >= n:
        raise UserError(f"data.val_size={val_size} leaves no training images (train has {n}); "
                        f"set data.val_size below {n} (0 = no validation split)")
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
    counts = torch.bincount(labels)
    exact = counts.double() * size / n
    quota = exact.floor().long()
    leftover = size - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:leftover]] += 1
    perm = torch.randperm(n, generator=generator(SUBSET, seed))
    shuffled = labels[perm]
    chosen = [perm[shuffled == c][: int(q)] for c, q in enumerate(quota)]
    return torch.cat(chosen).sort().values


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not valid for world size {world_size}")
