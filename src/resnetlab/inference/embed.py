"""One embedding (the pooled last feature map, before the classifier) per image file.

Written either as FILE.npy (float32, (N, D)) plus FILE.names.txt (one file name per line, same
order), or as FILE.safetensors holding the tensor "embeddings" with the names as a JSON list in
the metadata key "names" -- so rows are never separated from the files they describe.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from resnetlab.errors import UserError, expect_path, option
from resnetlab.files import atomic_write, check_writable, write_files_atomic, write_target

from .out_guard import refuse_foreign
from .predictor import Predictor, counted

FORMATS = (".npy", ".safetensors")


def embed_files(predictor: Predictor, paths: list[str], protocol: str = "center",
                batch_size: int = 64, progress=None) -> tuple[list[str], np.ndarray, list[dict]]:
    """(names of the readable files, float32 (N, num_features) embeddings, failed [{"file", "error"}]).
    progress(images read so far, total): called after each batch, when given."""
    idx, rows = [], []
    for views, i in counted(predictor.batches(paths, protocol, batch_size), len(paths), progress):
        idx += i.tolist()
        rows.append(predictor.embeddings(views).cpu())
    dim = predictor.model.num_features
    order = np.argsort(idx, kind="stable")  # batches group images read alike; rows are in file order
    emb = torch.cat(rows).numpy()[order] if rows else np.zeros((0, dim), dtype=np.float32)
    failed = [{"file": f, "error": reason} for f, reason in predictor.failed]
    return [paths[idx[k]] for k in order], emb.astype(np.float32, copy=False), failed


def output_paths(out) -> list[Path]:
    """The files an --out of `out` writes, or a UserError now (before any work) for a wrong suffix
    or a place that cannot be written."""
    out = expect_path(out, "out")
    if out.suffix not in FORMATS:
        raise UserError(f"{option('--out', 'out')} {out}: use a .npy (with a .names.txt beside it) or a .safetensors "
                        "file")
    paths = [out, out.with_suffix(".names.txt")] if out.suffix == ".npy" else [out]
    for path in paths:
        if path.suffix == ".txt":
            refuse_foreign(path, "embeddings.names.txt", "the names file of embeddings")
        else:
            refuse_foreign(path, "embeddings" + path.suffix, "an embeddings file")
        check_writable(path)
    return paths


def refuse_newlines(names) -> None:
    """FILE.names.txt holds a name a line: a name with a newline in it cannot be written there."""
    odd = next((str(n) for n in names if "\n" in str(n)), None)
    if odd is not None:
        raise UserError(f"the file name {odd!r} contains a newline, which FILE.names.txt cannot hold; write "
                        ".safetensors (names as JSON) instead of .npy")


def save_embeddings(out, names: list[str], emb: np.ndarray, metadata: dict | None = None) -> list[str]:
    """Write embeddings + names next to each other, each file atomically; returns the paths written."""
    shown = output_paths(out)
    paths = [write_target(p) for p in shown]  # a symbolic link the user names is written through
    if len(names) != len(emb):
        raise ValueError(f"{len(names)} names for {len(emb)} embeddings")
    if len(paths) == 2:
        refuse_newlines(names)
        array = io.BytesIO()
        np.save(array, emb)
        # os.fsencode: a name that is not UTF-8 is written as the bytes the file system holds
        write_files_atomic({paths[0]: array.getvalue(), paths[1]: b"".join(os.fsencode(n) + b"\n" for n in names)})
        return [str(p) for p in shown]
    from safetensors.numpy import save

    from resnetlab.models.safetensors_header import sorted_metadata

    meta = {"names": json.dumps(names), **{k: str(v) for k, v in (metadata or {}).items()}}
    with atomic_write(paths[0]) as f:  # safetensors' own save_file would make a 0600 file; keys sorted: reproducible
        f.writelines(sorted_metadata(save({"embeddings": np.ascontiguousarray(emb)}, metadata=meta)))
    return [str(shown[0])]


def load_embeddings(path) -> tuple[list[str], np.ndarray]:
    """(names, embeddings) from a file written by save_embeddings."""
    path = expect_path(path, "the embeddings file")
    if not path.is_file():
        raise UserError(f"embeddings file not found: {path}")
    if path.suffix == ".npy":
        names_path = path.with_suffix(".names.txt")
        if not names_path.is_file():
            raise UserError(f"{path}: the names file {names_path} is missing")
        return names_path.read_text().splitlines(), np.load(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return json.loads(f.metadata()["names"]), f.get_tensor("embeddings")
    raise UserError(f"{path}: expected a .npy or .safetensors embeddings file")
