"""The training counts line for many classes: its median is the median of the counts (halfway between the
middle two for an even number of classes), not the upper of the two."""
from types import SimpleNamespace

import pytest
import torch

from resnetlab.data.summary import counts_line

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def bundle(counts):
    classes = (CIFAR + [f"extra{i}" for i in range(1, 10)])[:len(counts)]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return SimpleNamespace(classes=classes, train=SimpleNamespace(labels=labels), val=None, test=None)


@pytest.mark.parametrize("counts, median", [
    (list(range(2, 16)), "8.5"),  # 14 classes, 2..15
    (list(range(2, 15)), "8"),  # 13 classes: the middle one
    ([3] * 6 + [5] * 8, "5"),  # the middle two are equal: no ".0"
    ([100_000] * 7 + [100_001] * 7, "100000.5"),
])
def test_the_median_of_the_training_counts(counts, median):
    low, high = counts.index(min(counts)), counts.index(max(counts))
    b = bundle(counts)
    assert counts_line(b) == (f"training images per class: {min(counts)} ({b.classes[low]}) to {max(counts)} "
                              f"({b.classes[high]}), median {median}; every count in data.json")
