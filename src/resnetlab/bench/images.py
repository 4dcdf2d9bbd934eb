"""The images a benchmark feeds both pipelines: the same files, the same labels, the same subset.

Given a folder (ROOT/train/<class>/<image>, e.g. CIFAR-10 as JPEG) a seeded subset of its
training images is used; without one, synthetic images are written as JPEG files into a
temporary folder, so the baseline still decodes files the way it would in real use.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import ArrayDataset, Normalizer, synthetic
from resnetlab.data import folder as folders
from resnetlab.errors import UserError

SYNTHETIC_SIDE = 32  # synthetic files are CIFAR-sized; the pipelines resize them like real ones


@dataclass
class BenchImages:
    root: Path
    paths: list[str]
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]


def bench_images(data_dir: str | None, num_images: int, seed: int = 0, workdir: str | None = None) -> BenchImages:
    """`num_images` training files of `data_dir` (a seeded sample), or synthetic JPEGs in `workdir`."""
    if num_images < 1:
        raise UserError(f"--images must be positive, got {num_images}")
    if data_dir is None:
        root = Path(workdir or tempfile.mkdtemp(prefix="resnetlab-bench-"))
        write_synthetic_jpegs(root, num_images)
    else:
        root = Path(data_dir).expanduser()
        if not (root / "train").is_dir():
            raise UserError(f"--data {data_dir}: no train/ folder; expected ROOT/train/<class>/<image>")
    scan = folders.scan(root / "train", None, skip_bad=False)
    paths, labels, classes = scan.paths, scan.labels, scan.classes
    if len(paths) < num_images:
        raise UserError(f"--data {root}: train/ holds {len(paths)} images, fewer than --images {num_images}")
    keep = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:num_images].sort().values
    return BenchImages(root, [paths[i] for i in keep.tolist()], labels[keep], classes)


def write_synthetic_jpegs(root: Path, num_images: int, num_classes: int = 10) -> None:
    """root/train/class<k>/<i>.jpg from resnetlab's deterministic synthetic dataset."""
    data = synthetic(num_images, num_classes, SYNTHETIC_SIDE, "train")
    pixels = data.images.permute(0, 2, 3, 1).numpy()
    for i, (img, label) in enumerate(zip(pixels, data.labels.tolist())):
        folder = root / "train" / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i:06d}.jpg", quality=90)



def write_large_jpegs(root: Path, count: int, seed: int = 0) -> None:
    """root/train/class<k>/<i>.jpg, ImageNet-like: 10 classes, sizes around 500x375, smooth content plus noise."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = int(rng.integers(400, 520)), int(rng.integers(300, 400))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        img = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        path = root / "train" / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)

def decoded(images: BenchImages, size: int, cache_dir: Path) -> ArrayDataset:
    """Our pipeline's in-memory form of the files: decoded once at `size` (through the data cache)."""
    data, _ = folders.small_dataset(images.paths, images.labels, images.classes, size, images.root,
                                    cache_dir, skip_bad=False, part="benchmark")
    return data


def bench_data_config(size: int) -> DataConfig:
    """CIFAR-style augmentation (pad 4, crop, flip) at `size`, per-channel normalisation: the
    same work as the baseline's per-sample transforms."""
    return DataConfig(dataset="folder", augment="cifar", normalize="channel", image_size=size, val_size=0)


def fitted_normalizer(data: ArrayDataset) -> Normalizer:
    return Normalizer.fit("channel", data.images.split(1024))
