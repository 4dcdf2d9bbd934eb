"""The views of an evaluation batch, and their per-image average.

An eval loader's batch holds a list of views. For center, flip and 10crop each is a uint8
(B, 3, h, w) tensor: one view of every image of the batch, in order. Multi-scale testing feeds
whole images, whose shapes differ with their aspect ratios, so its views are `ViewGroup`s: the
images of the batch that share a shape at one scale, stacked, each scored as it is and mirrored.
`mean_over_views` averages a per-view output (softmax, embedding) per image for either kind.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ViewGroup:
    """Views of some images of a batch, all of one shape: x (k, 3, h, w) uint8, rows (k,) int64
    the place of each in the batch; with mirror, x flipped left-right is scored as views too."""

    x: torch.Tensor
    rows: torch.Tensor
    mirror: bool

    def to(self, device, non_blocking: bool = False) -> ViewGroup:
        return ViewGroup(self.x.to(device, non_blocking=non_blocking),
                         self.rows.to(device, non_blocking=non_blocking), self.mirror)

    def pin_memory(self) -> ViewGroup:  # torch's DataLoader(pin_memory=True) calls it
        return ViewGroup(self.x.pin_memory(), self.rows.pin_memory(), self.mirror)


def mean_over_views(views: list, score) -> torch.Tensor:
    """(B, D) float: per image of the batch, the mean of score(view) (a (n, D) float tensor for
    n images) over that image's views, tensors of the whole batch or ViewGroups."""
    total = None
    if not any(isinstance(view, ViewGroup) for view in views):
        for view in views:
            out = score(view)
            total = out if total is None else total + out
        return total / len(views)
    counts = torch.bincount(torch.cat([g.rows.repeat(1 + g.mirror) for g in views]))  # views per image
    for group in views:
        for x in (group.x, group.x.flip(3)) if group.mirror else (group.x,):
            out = score(x)
            if total is None:
                total = out.new_zeros((len(counts), *out.shape[1:]))
            total.index_put_((group.rows,), out, accumulate=True)
    return total / counts.to(total.dtype)[:, None]
