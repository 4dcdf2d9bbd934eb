"""The baseline we measure against: the pipeline most PyTorch ResNet code uses.

Per sample, in a map-style Dataset: PIL decode -> (resize) -> pad 4 -> random crop -> random
flip -> ToTensor (HWC uint8 -> CHW float in [0, 1]) -> Normalize(mean, std); then the default
collate of torch's DataLoader stacks the samples. It is written here without torchvision (which
this project does not use), step for step what torchvision.transforms does, so the comparison
is against the same work done the usual way, not against a straw man: the model side of the
baseline is the same network in eager fp32 NCHW.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from PIL import Image

from resnetlab.errors import UserError

PAD = 4  # CIFAR augmentation of He et al. Sec. 4.2, as in our own loader


class PILFolderDataset(torch.utils.data.Dataset):
    """Item i = (normalised float (3, size, size), label) of file paths[i], decoded on every access."""

    def __init__(self, paths: list[str], labels: list[int], size: int, mean, std, train: bool = True, seed: int = 0):
        if len(paths) != len(labels) or not paths:
            raise UserError(f"the baseline pipeline needs one label per image and at least one image "
                            f"(got {len(paths)} paths, {len(labels)} labels)")
        self.paths, self.labels, self.size, self.train = list(paths), list(labels), size, train
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        if self.train:
            img = self._pad_crop_flip(img)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
        return (x - self.mean) / self.std, self.labels[i]  # Normalize

    def _pad_crop_flip(self, img: Image.Image) -> Image.Image:
        padded = Image.new("RGB", (self.size + 2 * PAD,) * 2)
        padded.paste(img, (PAD, PAD))
        left, top = self.rng.randint(0, 2 * PAD), self.rng.randint(0, 2 * PAD)
        img = padded.crop((left, top, left + self.size, top + self.size))
        return img.transpose(Image.FLIP_LEFT_RIGHT) if self.rng.random() < 0.5 else img


def baseline_loader(dataset: PILFolderDataset, batch_size: int, workers: int = 0, seed: int = 0):
    """The usual shuffled DataLoader with the default collate (drop_last, like our train loader);
    with workers, persistent and pinned as the reference scripts run them on a GPU."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, generator=gen, persistent_workers=workers > 0,
                                       pin_memory=workers > 0 and torch.cuda.is_available(),
                                       worker_init_fn=_seed_worker)


def _seed_worker(_worker_id: int) -> None:
    """Each worker holds a copy of the dataset's random.Random: reseed it from the worker's own
    seed, or every worker would draw the same crops and flips."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng.seed(info.seed)


def baseline_workers(device: torch.device) -> int:
    """Decoding processes the baseline gets: none on the CPU, where the model needs every core
    (measured: the PIL pipeline is ~5% of a ResNet-20 step there); on a GPU, a worker per core
    up to 8, like the reference scripts' --workers, so the baseline is not starved of images."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def endless(loader):
    """Batches of `loader`, epoch after epoch: a benchmark times steps, not epochs."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("the benchmark's training split has fewer images than one batch; lower --batch-size")
