"""CIFAR-10 / CIFAR-100 in the official python format: find, download, verify, extract, load.

A data directory may hold the extracted folder (cifar-10-batches-py/, cifar-100-python/) or the
official archive; with download=True the archive is fetched. The archive is always checked
against its published MD5. A download goes through resnetlab.downloads, as weights do (MD5 checked
as it streams; the archive's published size and a twentieth its limit; a server that stalls or
drips given up), and it and extraction go through temporary names in the same directory followed
by a rename, so an interrupted run never leaves anything that looks valid.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.downloads import DownloadFailed, download, failure_message, file_digest, remove_stale_downloads
from resnetlab.errors import UserError, breaks_lines, option

from .cifar_pickle import RefusedPickle, read_cifar_pickle
from .datasets import ArrayDataset


@dataclass(frozen=True)
class CifarSpec:
    archive: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    size: int  # bytes of the published archive


# Published at https://www.cs.toronto.edu/~kriz/cifar.html
SPECS = {
    "cifar10": CifarSpec("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                         b"labels", b"label_names", 170_498_071),
    "cifar100": CifarSpec("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train",), ("test",), "meta",
                          b"fine_labels", b"fine_label_names", 169_001_437),
}


def load_cifar(name: str, root: str | os.PathLike, download: bool = False, url: str | None = None,
               md5: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of CIFAR `name` from `root`; url/md5 override the official ones (for tests)."""
    spec = SPECS[name]
    folder = ensure_extracted(spec, Path(root), download, url or spec.url, md5 or spec.md5)
    classes = _class_names(folder / spec.meta_file, spec.names_key)
    train, test = (_load_batches(folder, files, spec.label_key, classes)
                   for files in (spec.train_files, spec.test_files))
    return train, test


def ensure_extracted(spec: CifarSpec, root: Path, download: bool, url: str, md5: str) -> Path:
    """The extracted folder under root, extracting (and first downloading) the archive if needed."""
    folder, archive = root / spec.folder, root / spec.archive
    missing = [f for f in (*spec.train_files, *spec.test_files, spec.meta_file) if not (folder / f).is_file()]
    if not missing:
        return folder
    if folder.exists():
        raise UserError(f"{folder} is incomplete (missing {', '.join(missing)}); delete it and run again "
                        f"to re-extract {spec.archive}")
    if not archive.is_file():
        if not download:
            raise UserError(f"{spec.folder}/ or {spec.archive} not found in {root}; place the archive "
                            f"there or {option('pass --download', 'set data.download=true')}")
        fetch(url, archive, md5, spec.size + spec.size // 20)  # a twentieth to spare: the size of a mirror's copy
    elif file_digest(archive, "md5") != md5:
        raise UserError(f"{archive} does not match the published MD5 {md5} (corrupt or not the official "
                        f"archive); delete it and download again")
    _extract(archive, root, spec.folder)
    return folder


def fetch(url: str, dest: Path, md5: str, limit: int) -> None:
    """Download url to dest (atomically); dest appears only if the MD5 of the bytes matches. A server
    that announces or sends over `limit` bytes, stalls or drips (resnetlab.downloads) is given up."""
    remove_stale_downloads(dest)  # those of a download killed outright
    try:
        download(url, dest, limit, digest=("md5", md5))
    except DownloadFailed as err:
        raise UserError(failure_message(dest.name, [f"{url}: {err}"], "Nothing was saved", url, dest)) from None


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract into a temporary directory beside the target, then rename the folder into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"cannot extract {archive} ({err}); delete it and download again") from None
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive} does not contain {folder}/; is it the right archive?")
        os.rename(tmp / folder, root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpickle(path: Path) -> dict:
    """One CIFAR python file, read by the restricted unpickler: a file cannot run code."""
    try:
        with open(path, "rb") as f:
            return read_cifar_pickle(f)
    except RefusedPickle as err:
        raise UserError(f"resnetlab refuses to run code from {path}: {err}; this is not an official CIFAR "
                        f"file, delete {path.parent} and extract the official archive") from None
    except OSError as err:
        raise UserError(f"cannot read CIFAR file {path} ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 -- any damage (truncation, bad opcode, bad memo) is the same fault
        raise UserError(f"cannot read CIFAR file {path} ({type(err).__name__}: {err}); delete {path.parent} "
                        f"to re-extract") from None


def _class_names(path: Path, key: bytes) -> list[str]:
    names = _unpickle(path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{path} has no list of class names under {key.decode()!r}; is it a CIFAR meta file?")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    odd = next((n for n in names if breaks_lines(n)), None)  # ESC sequences, a newline: to terminals and CSVs
    if odd is not None:
        raise UserError(f"{path}: the class name {odd!r} holds a control character; is it a CIFAR meta file?")
    return names


def _load_batches(folder: Path, files: tuple[str, ...], label_key: bytes, classes: list[str]) -> ArrayDataset:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        try:
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            raise UserError(f"{folder / name} is not a CIFAR batch ({err!r})") from None
    x, y = torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    if len(y) != len(x) or len(y) == 0 or y.min() < 0 or y.max() >= len(classes):
        raise UserError(f"labels in {folder} do not match its {len(classes)} class names")
    return ArrayDataset(x, y, classes)
