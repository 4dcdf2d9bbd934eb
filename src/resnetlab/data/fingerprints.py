"""What RUN/data.json holds to tell, at a resume, whether a folder's images are still the ones the
run trained on: per split, digests of the files' names, of their names and sizes, of their names,
sizes and modification times, and, for small images decoded into memory, of their pixels.

Names, sizes and times alone cannot tell a copy made without keeping times (`cp -r`, `scp`: the
same images) from an image replaced by another of the same size with its time kept (`touch -r`,
archives with fixed times: other images). Decoded pixels can, for every dataset held in memory;
photos, decoded only as they are trained on, are judged by their names, sizes and times.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 26  # pixels hashed at a time where they are not contiguous: a bounded copy


def fingerprint(paths: list[str], root: Path, images: np.ndarray | None = None) -> dict[str, str]:
    """{"names", "sizes", "mtimes"[, "pixels", "decoder"]}: SHA-256 over each file's path relative to
    root, then with its size, then with its size and mtime (the one digest runs before 2026-12-06 recorded);
    "pixels" over `images`, the decoded uint8 arrays of the files in order (N, 3, H, W), when there
    are any: hashed where they lie (a copy of an ImageNet-sized set at 64 px would be 15 GB)."""
    prefix = len(str(root)) + 1
    names, sizes, mtimes = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for path in paths:
        rel = path[prefix:]
        try:
            st = os.stat(path)
            size, line = str(st.st_size), f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
        except OSError:  # gone since the scan: reported when it is decoded
            size, line = "-", f"{rel}\0-\n"
        names.update(f"{rel}\n".encode("utf-8", "surrogateescape"))
        sizes.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
        mtimes.update(line.encode("utf-8", "surrogateescape"))
    found = {"names": names.hexdigest(), "sizes": sizes.hexdigest(), "mtimes": mtimes.hexdigest()}
    if images is not None:
        found["decoder"] = decoder()
        pixels = hashlib.sha256()
        for chunk in np.array_split(images, max(1, -(-images.nbytes // CHUNK_BYTES))):
            pixels.update(memoryview(np.ascontiguousarray(chunk)).cast("B"))  # no copy where they are contiguous
        found["pixels"] = pixels.hexdigest()
    return found


def decoder() -> str:
    """What turned the files into pixels: another Pillow (or resnetlab's decoding rules) may give other
    pixels for the same files."""
    import PIL

    from .folder import CACHE_VERSION

    return f"Pillow {PIL.__version__}, resnetlab decoding v{CACHE_VERSION}"


def fingerprint_changes(was: dict, now: dict) -> list[str]:
    """How each split's images differ between two data records' fingerprints (per split: a dict, or
    the string of names, sizes and mtimes older runs recorded); [] when they are the same images."""
    changes = []
    for split in was:
        a, b = was[split], now.get(split)
        if b is None or a == b:
            continue
        if isinstance(a, str) or isinstance(b, str):  # an older record: its one digest is "mtimes"
            if (a if isinstance(a, str) else a.get("mtimes")) != (b if isinstance(b, str) else b.get("mtimes")):
                changes.append(f"images of {split} were replaced or edited since (same names, other sizes or "
                               "modification times)")
        elif a.get("names") != b.get("names"):
            changes.append(f"files of {split} were renamed since (as many per class, other names)")
        elif a.get("sizes") != b.get("sizes"):
            changes.append(f"images of {split} were replaced or edited since (same names, other sizes)")
        elif "pixels" in a and "pixels" in b:
            if a["pixels"] != b["pixels"] and a.get("decoder", b.get("decoder")) != b.get("decoder"):
                changes.append(f"images of {split} decode to other pixels than when the run trained (same names and "
                               f"sizes; {a.get('decoder')} then, {b.get('decoder')} now)")
            elif a["pixels"] != b["pixels"]:
                changes.append(f"images of {split} were replaced or edited since (same names and sizes, other pixels)")
        elif a.get("mtimes") != b.get("mtimes"):
            changes.append(f"images of {split} have other modification times than when the run trained (same names "
                           "and sizes: edited, or a copy that did not keep the times, such as cp -r or scp; a copy "
                           "made with cp -a or rsync -a resumes)")
    return changes
