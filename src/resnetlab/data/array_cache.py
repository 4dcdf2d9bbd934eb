"""The decoded-image cache of a small-image folder (data/folder.py): one .npz of uint8 arrays per
split, keyed by the file listing. Written atomically; read without unpickling, and a file that is
damaged or not ours is decoded again rather than trusted."""
from __future__ import annotations

import glob
import json
import os
import socket
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from resnetlab.errors import ResnetlabWarning
from resnetlab.files import SHARED_IDLE_S, atomic_write, remove_stale_temporaries

KEY_CHARS = 20  # of the listing's hash in a cache file's name: LABEL-KEY.npz
LABEL_BYTES = 80  # of the folder's name in it: a name of up to 255 bytes would make one too long


def cache_file(cache_dir: Path, root: Path, key: str, part: str, size: int, skip_bad: bool) -> tuple[Path, str]:
    """(the cache file of listing `key`, its origin: the machine, folder, part of it, size and skip_bad
    whose newer cache replaces it). The machine: a cache on a shared home, read by nodes that each
    copied the data to the same path (other ctimes, so other keys), must not have each node remove
    the others' caches in turn. The folder's name labels the file, cut short (a legal name of 255
    bytes would make the file's too long; the key keeps it unique)."""
    label = os.fsencode(root.resolve().name)[:LABEL_BYTES].decode("utf-8", "ignore") or "root"
    origin = json.dumps([socket.gethostname(), str(root.resolve()), part, size, skip_bad])
    return cache_dir / f"{label}-{key[:KEY_CHARS]}.npz", origin


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
    except FileNotFoundError:  # removed since it was listed (replaced by a newer one): decoded, without a word
        return None
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


def save_cache(path: Path, origin: str, **arrays) -> None:
    """Written atomically, after removing what killed writers left in the folder (a CIFAR-sized
    temporary file is 150 MB, and nothing else would ever remove it); then the caches it replaces
    go (`evict_replaced`). origin: which folder, split and size the arrays are of."""
    try:
        remove_stale_temporaries(path.parent, idle_s=SHARED_IDLE_S)  # a cache other containers may share
    except OSError:
        pass  # a folder that cannot be listed or cleaned: the write below says what is wrong
    with atomic_write(path) as f:
        np.savez(f, origin=np.array(origin), **arrays)
    evict_replaced(path, origin)


def evict_replaced(path: Path, origin: str) -> list[Path]:
    """Remove the caches of the same origin under other keys (the folder's files since edited, added
    to, copied with new ctimes, or an older resnetlab's decoding): each was a whole decoded copy (184 MB
    for CIFAR-10) that nothing would read again. Caches of other folders, sizes or splits stay; a file
    that cannot be read or removed is left. Returns the ones removed."""
    label, removed = path.name[:-len("-" + "0" * KEY_CHARS + ".npz")], []
    for other in sorted(path.parent.glob(f"{glob.escape(label)}-{'?' * KEY_CHARS}.npz")):
        try:
            with open(other, "rb") as f, np.load(f, allow_pickle=False) as z:
                same = other != path and "origin" in z.files and str(z["origin"]) == origin
            if same:
                other.unlink()
                removed.append(other)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
            continue
    return removed
