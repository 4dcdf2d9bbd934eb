"""What kind of dataset a `--data DIR` holds, so the command line needs no --dataset flag.

- DIR/train/<class>/*.jpg|png... (or val/, test/), or DIR/<class>/*.jpg|png...
                                           -> data.dataset = folder, data.root = DIR
- DIR/cifar-10-batches-py (or the archive) -> cifar10, root DIR; DIR itself being that folder works too
- DIR/cifar-100-python (or the archive)    -> cifar100
Anything else keeps the recipe's data.dataset (with data.root = DIR), and the data package
reports what it expected to find.
"""
from __future__ import annotations

import os
from pathlib import Path

from resnetlab.data.folder import folder_layout
from resnetlab.errors import UserError, option

CIFAR_MARKERS = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz"),
}


def data_overrides(path: str, recipe_dataset: str) -> list[tuple[str, object]]:
    """Config overrides [(key, value)] for `--data path`; data.root is absolute, so that the run's
    config still finds the data from another working directory (`resnetlab eval RUN` elsewhere)."""
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such directory"
        raise UserError(f"{option('--data', 'data')} {path}: {what} (expected a folder with train/<class>/ images "
                        "or the CIFAR python files)")
    if recipe_dataset == "synthetic":
        return [("data.root", str(root))]
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as err:  # no read permission: every later look inside would be a traceback
        raise UserError(f"{option('--data', 'data')} {path}: cannot list the folder ({err.strerror or err}); fix its "
                        "permissions") from None
    for name, markers in CIFAR_MARKERS.items():
        if root.name == markers[0]:
            return [("data.dataset", name), ("data.root", str(root.parent))]
        if any((root / m).exists() for m in markers):
            return [("data.dataset", name), ("data.root", str(root))]
    if folder_layout(root) is not None:
        return [("data.dataset", "folder"), ("data.root", str(root))]
    return [("data.root", str(root))]


def check_run_data_root(cfg) -> None:
    """A run's image folder that is gone is said as such (not as a folder without class folders),
    with the way to point the run at where it is now."""
    root = cfg.data.root
    if cfg.data.dataset == "folder" and root and not Path(root).expanduser().is_dir():
        raise UserError(f"the run's data folder {root} no longer exists; pass {option('--data DIR', 'data=DIR')}, the "
                        "folder where its images are now")
