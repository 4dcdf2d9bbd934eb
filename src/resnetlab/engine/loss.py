"""The training loss: cross-entropy, with label smoothing and, for data.balance=loss, class weights.

PyTorch's `cross_entropy(weight=w, label_smoothing=e)` weights the smoothing term of every sample by
the weight of each class it spreads over, but divides by the weights of the true classes only: a
rare class weighted 33x is pulled up by every sample of the others, and a model trained so predicts
the rarest class for everything (measured: 500/500/10 images, 0.99% top-1 against 100% unweighted).
Here a sample's whole smoothed loss is weighted by its own class's weight, as sklearn's "balanced"
weights mean: each class counts as it would in a balanced set. Without smoothing it is PyTorch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean loss of a batch: logits (B, C) float, y (B,) int64; class_weights (C,) or None."""
    if class_weights is None:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    weight = class_weights[y]
    return (per_sample * weight).sum() / weight.sum()
