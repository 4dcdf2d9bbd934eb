"""Which data a run trained on, as a report tells runs apart: by the images themselves where the run
recorded them, so the same images at another path (a folder moved or copied, seeds run on other
machines, a run resumed on another node) still pool, and runs on other images never do.

RUN/data.json (data/summary.py data_record) holds, for folder datasets, per-split digests of the
files' names and sizes relative to the root (data/fingerprints.py): the same for a copy of the folder
anywhere, with or without its modification times, and taken over the whole split before the seeded
hold-out, so every seed of one dataset shares them. CIFAR is its dataset name (the archive is checked by
MD5), synthetic data its generator's keys; other runs without the digests are told apart by data.root.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def data_identity(path: Path, config: dict) -> str:
    """"files:<digest>" of the run's recorded images; for CIFAR "cifar:<dataset>" (its archive is checked
    against the published MD5 at every use: the same images wherever it lies, so seeds run on machines
    with other paths pool) and for synthetic data its generator's keys; else "root:<data.root>" (normalised)."""
    data = config.get("data") or {}
    dataset = data.get("dataset")
    if dataset in ("cifar10", "cifar100"):
        return f"cifar:{dataset}"
    if dataset == "synthetic":
        return "synthetic:" + json.dumps({k: v for k, v in data.items() if k.startswith("synthetic")}, sort_keys=True)
    splits = _fingerprints(Path(path))
    if splits:
        # "sizes" (names and sizes): "mtimes" differs in a copy that did not keep times, and "pixels"
        # with another Pillow
        digests = {split: d.get("sizes") for split, d in splits.items()}
        return "files:" + hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    root = data.get("root")
    return f"root:{os.path.normpath(root) if isinstance(root, str) else root}"


def _fingerprints(path: Path) -> dict | None:
    """The per-split fingerprints of RUN/data.json; None when there are none or it cannot be read."""
    if not (path / "data.json").is_file():  # (a FIFO there would wait for ever)
        return None
    try:
        record = json.loads((path / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    splits = record.get("fingerprints") if isinstance(record, dict) else None
    if not isinstance(splits, dict) or not splits:
        return None
    if not all(isinstance(d, dict) and isinstance(d.get("sizes"), str) for d in splits.values()):
        return None  # a damaged or edited record, or one older than the sizes digest: the root is the better guess
    return splits


def data_notes(groups: dict[str, list]) -> dict[str, str]:
    """Per group, the words for its data in a report's setting column: its data.root (the roots of its
    runs when they differ), and where two groups on other images show the same root (a folder changed
    in place between runs), the digest that tells them apart."""
    roots = {label: ", ".join(dict.fromkeys(str((r.config.get("data") or {}).get("root")) for r in members))
             for label, members in groups.items()}
    ids = {label: members[0].data for label, members in groups.items()}
    notes = {}
    for label, root in roots.items():
        clash = any(roots[other] == root and ids[other] != ids[label] for other in roots)
        kind, _, value = ids[label].partition(":")
        notes[label] = f"{root} ({value[:8] if kind == 'files' else 'images not recorded'})" if clash else root
    return notes
