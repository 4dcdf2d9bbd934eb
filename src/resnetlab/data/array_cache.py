"""The decoded-image cache of a small-image folder (data/folder.py): one .npz of uint8 arrays per
split, keyed by the file listing. Written atomically; read without unpickling, and a file that is
damaged or not ours is decoded again rather than trusted."""
from __future__ import annotations

import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from resnetlab.errors import ResnetlabWarning
from resnetlab.files import SHARED_IDLE_S, atomic_write, remove_stale_temporaries


def read_cache(cache: Path, count: int, size: int):
    """A cache file's arrays, or None (with a warning) when it is damaged or not one of ours (cut short
    by a full disk, edited, written by another version): the images are then decoded again and the
    file replaced. np.load never unpickles (allow_pickle=False)."""
    try:
        with open(cache, "rb") as f, np.load(f, allow_pickle=False) as z:  # f: closed also when np.load fails
            images, keep, resized, reasons = z["images"], z["keep"], int(z["resized"]), z["reasons"].tolist()
        kept = int(keep.sum()) if keep.dtype == np.bool_ and keep.shape == (count,) else -1
        if (kept < 0 or images.dtype != np.uint8 or images.shape != (kept, size, size, 3)
                or len(reasons) != count - kept or not all(isinstance(r, str) for r in reasons)):
            reason = "arrays of the wrong type or shape"
        else:
            return images, keep, resized, reasons
    except EOFError:
        reason = "empty or cut short"
    except zipfile.BadZipFile as err:
        reason = f"damaged archive: {err}"
    except KeyError:
        reason = "arrays of other names"
    except (OSError, ValueError, TypeError, zlib.error) as err:  # ValueError: also a pickle, refused unread
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not a NumPy .npz archive"
    warnings.warn(f"the decoded-image cache {cache} is damaged or not resnetlab's ({reason}): decoding the "
                  "images again and replacing it", ResnetlabWarning, stacklevel=3)
    return None


def save_cache(path: Path, **arrays) -> None:
    """Written atomically, after removing what killed writers left in the folder (a CIFAR-sized
    temporary file is 150 MB, and nothing else would ever remove it)."""
    try:
        remove_stale_temporaries(path.parent, idle_s=SHARED_IDLE_S)  # a cache other containers may share
    except OSError:
        pass  # a folder that cannot be listed or cleaned: the write below says what is wrong
    with atomic_write(path) as f:
        np.savez(f, **arrays)
