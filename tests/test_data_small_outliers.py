"""A folder of small images with a few large ones stays a folder of small images (decoded once into memory,
the automatic recipe's small-image recipe): one photo among 60,000 8 px images made it photos, at 64 px,
decoded from disk every epoch and 4x slower, without a word."""
import warnings

import numpy as np
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import build_data
from resnetlab.data.folder import PROBES, small_side
from resnetlab.data.survey import survey
from resnetlab.errors import ResnetlabWarning


def _folder(root, small, large, size=8):
    rng = np.random.default_rng(0)
    for i in range(small):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03}.png")
    for i in range(large):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i * 8:03}b.png")
    return root


def test_a_few_large_images_among_small_ones_are_resized_to_them_and_said(tmp_path):
    root = _folder(tmp_path / "d", PROBES - 2, 2)  # every image probed
    assert small_side(sorted(str(p) for p in root.rglob("*.png"))) == 8
    assert survey("folder", root).small
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = build_data(DataConfig(dataset="folder", root=str(root), val_size=0, cache_dir=str(tmp_path / "c")))
    assert bundle.train.images.shape[1:] == (3, 8, 8) and len(bundle.train) == PROBES
    said = [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning)]
    assert any(f"2 of {PROBES} images are not 8x8 px like the rest" in m for m in said), said


def test_a_folder_of_mostly_large_images_is_photos(tmp_path):
    root = _folder(tmp_path / "d", 8, PROBES)
    assert small_side(sorted(str(p) for p in root.rglob("*.png"))) is None and not survey("folder", root).small
