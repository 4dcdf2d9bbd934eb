"""Images shared between splits: a score on them is partly a score on the images the model trained
(or was selected) on.

Two kinds are found, per pair of splits (train/val, train/test, val/test; val may be the part held
out of train):
- the same file: one realpath, or one device and inode (test/ a symbolic link to train/, hard
  links, links to files);
- byte-identical copies (val/ made with `cp -r train val`, a photo copied into two folders).
Cheaply: one stat per file gives its inode and size; only files whose size also occurs in the other
split are read, first their first PREFIX_BYTES, then, where those agree too, the whole file.
A pair with more than HASHED_MAX such files is checked for the same files only.

Not found: duplicates within one split, and copies of one photo with other bytes (re-encoded,
resized, edited metadata: the same pixels or the same scene). Duplicates can be deliberate, so
this is a warning, never an error.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict

PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
PREFIX_BYTES = 4096
HASHED_MAX = 200_000  # files read for one pair at most (sizes collide in every file of an uncompressed format)
CHUNK = 1 << 20
EXAMPLES = 2
WORDS = {"train": "training", "val": "validation", "test": "test"}
SCORES = {("train", "val"): "their validation error is partly a training error",
          ("train", "test"): "their test score is partly a training score",
          ("val", "test"): "their test score is partly a score on the images the model was selected on"}


def _entries(paths: list[str]) -> list[tuple[str, tuple[int, int], int]]:
    """(path, (device, inode), size) of each file that can be stat'ed (one gone is reported elsewhere)."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):  # a FIFO would block the open for ever (it is refused where it is decoded)
            found.append((path, (st.st_dev, st.st_ino), st.st_size))
    return found


def _digest(path: str, limit: int | None, kept: dict) -> bytes | None:
    """blake2b of the file's first `limit` bytes (None: all), once per path and limit."""
    key = (path, limit)
    if key not in kept:
        sha = hashlib.blake2b(digest_size=16)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # swapped for a FIFO since the stat
            with open(fd, "rb") as f:  # closes fd whatever happens below
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{path} is not a regular file")
                left = limit if limit is not None else -1
                while left:
                    block = f.read(CHUNK if left < 0 else min(CHUNK, left))
                    if not block:
                        break
                    sha.update(block)
                    left = left - len(block) if left > 0 else left
            kept[key] = sha.digest()
        except OSError:
            kept[key] = None
    return kept[key]


def _pair(a: list, b: list, kept: dict) -> dict:
    """Counts (and example pairs of paths, b's first) of b's files that are a's files or copies of them."""
    inodes = {ident: path for path, ident, _ in a}
    same = [(path, inodes[ident]) for path, ident, _ in b if ident in inodes]
    shared = {path for path, _ in same}
    rest = [e for e in b if e[0] not in shared]
    sizes_a = {size for _, _, size in a}
    cand_b = [e for e in rest if e[2] in sizes_a]
    wanted = {size for _, _, size in cand_b}
    cand_a = [e for e in a if e[2] in wanted]
    found = {"images": len(b), "of": len(a), "same_file": len(same), "identical": 0, "examples": same[:EXAMPLES]}
    if len(cand_a) + len(cand_b) > HASHED_MAX:
        found["identical"] = None  # not checked
        return found
    key = lambda e, limit: (e[2], _digest(e[0], limit, kept))  # noqa: E731
    starts = defaultdict(list)
    for e in cand_a:
        starts[key(e, PREFIX_BYTES)].append(e)
    whole = {}
    copies = []
    for e in cand_b:
        start = key(e, PREFIX_BYTES)
        if start[1] is None or start not in starts:
            continue
        if e[2] <= PREFIX_BYTES:  # the prefix was the whole file
            copies.append((e[0], starts[start][0][0]))
            continue
        for other in starts[start]:
            whole.setdefault(key(other, None), other[0])
        match = whole.get(key(e, None))
        if match is not None and key(e, None)[1] is not None:
            copies.append((e[0], match))
    found["identical"] = len(copies)
    found["examples"] = (same + copies)[:EXAMPLES]
    return found


def split_overlap(files: dict[str, list[str]]) -> dict[str, dict]:
    """{"train/val": {"images", "same_file", "identical", "examples"}, ...} for each pair of the splits
    given (paths per split); "images" counts the second split's files, "identical" is None when
    there were too many files of colliding sizes to read."""
    entries = {split: _entries(paths) for split, paths in files.items() if paths}
    kept: dict = {}
    return {f"{a}/{b}": _pair(entries[a], entries[b], kept) for a, b in PAIRS if a in entries and b in entries}


def overlap_record(found: dict[str, dict]) -> dict[str, dict]:
    """The counts as RUN/data.json keeps them (no examples)."""
    return {pair: {k: v for k, v in counts.items() if k != "examples"} for pair, counts in found.items()}


def describe_overlap(found: dict[str, dict], root, held_out: bool = False) -> str | None:
    """One line for the pairs of splits that share images, or None when none do. held_out: val is
    the part held out of train, not a val/ folder (a test/ that is train/ shares images with both)."""
    prefix = str(root).rstrip(os.sep) + os.sep
    rel = lambda p: p[len(prefix):] if p.startswith(prefix) else p  # noqa: E731
    found = dict(found)
    if held_out and "train/test" in found and "val/test" in found:
        a, b = found["train/test"], found["val/test"]
        whole = {k: a[k] + b[k] for k in ("of", "same_file")}
        whole["identical"] = None if None in (a["identical"], b["identical"]) else a["identical"] + b["identical"]
        whole.update(images=a["images"], examples=a["examples"] + b["examples"])
        if whole["same_file"] + (whole["identical"] or 0) == whole["images"]:  # test/ is all of train/'s folder
            found["train/test"] = whole
            del found["val/test"]
    parts = []
    for pair, counts in found.items():
        a, b = pair.split("/")
        n, images = counts["same_file"] + (counts["identical"] or 0), counts["images"]
        if not n:
            continue
        shown = counts["examples"][:EXAMPLES]
        examples = ", ".join(f"{rel(x)} = {rel(y)}" for x, y in shown) + (", ..." if n > len(shown) else "")
        if n == images and not (b == "val" and held_out):
            what = (f"{b}/ is {a}/ (the same {n} files: a symbolic link?)" if counts["same_file"] == n == counts["of"]
                    else f"{b}/ is a copy of {a}/ ({examples})" if n == counts["of"]
                    else f"every {b}/ image ({n}) is also a {WORDS[a]} image ({examples})")
            parts.append(f"{what}: its score is a {WORDS[a]} score, not a {WORDS[b]} score; "
                         f"give {b}/ images of its own")
            continue
        kinds = ", ".join(f"{c} {w}" for c, w in ((counts["same_file"], "the same file"),
                                                 (counts["identical"] or 0, "byte-identical")) if c)
        named = "validation images (held out of train)" if b == "val" and held_out else f"{WORDS[b]} images"
        parts.append(f"{n} of {images} {named} are also {WORDS[a]} images ({kinds}: {examples}): {SCORES[(a, b)]}; "
                     "remove them from one side")
    return "; ".join(parts) or None
