"""Where the real CIFAR-10 JPEG folders are: $RESNETLAB_CIFAR10_JPEG, else ../shared beside the repo."""
import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("RESNETLAB_CIFAR10_JPEG", ""),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg",  # <root>/../shared
    "/work/shared/data/cifar10-jpeg",
]
CIFAR10_JPEG = next((Path(p) for p in _CANDIDATES if p and Path(p, "train").is_dir()), Path(_CANDIDATES[1]))
