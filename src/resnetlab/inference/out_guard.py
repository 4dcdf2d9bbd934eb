"""What an `export` or `embed` --out may replace: nothing, an empty file, or an earlier file of the
same kind that resnetlab wrote. Anything else at that name (a checkpoint copied out of its run, a
model from another tool, a user's own .npy) is refused before any work, since replacing it would
lose it; the user removes it or picks another name. Every check only reads: no file is unpickled or
run (TorchScript is looked at as the zip it is, ONNX as protobuf)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from resnetlab.errors import UserError, option
from resnetlab.models.weights import safetensors_metadata

# keys that every resnetlab ONNX export holds in its metadata_props (export.metadata())
_ONNX_KEYS = {"model_name", "classes", "preprocessing", "normalizer"}


def _onnx_is_ours(path: Path) -> bool:
    try:
        import onnx
    except ImportError:  # without onnx nobody can tell; an ONNX export needs it anyway
        raise UserError(f"ONNX export needs the export extra: pip install 'resnetlab[export]' (without onnx, "
                        f"whether {path} is an earlier resnetlab export cannot be told either)") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, not ONNX: not ours
        return False
    return _ONNX_KEYS <= {prop.key for prop in model.metadata_props}


def _torchscript_is_ours(path: Path) -> bool:
    from .export import TORCHSCRIPT_META

    try:
        with zipfile.ZipFile(path) as archive:  # a TorchScript file is a zip: its names are read, nothing is loaded
            return any(name.endswith(f"/extra/{TORCHSCRIPT_META}") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _npy_rows(path: Path) -> int | None:
    """The number of rows of a 2-D .npy array (its header only), else None."""
    import numpy as np

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:  # the header only: no array, and no object array, is loaded
            version = fmt.read_magic(f)
            shape, _, _ = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    except Exception:
        return None
    return shape[0] if len(shape) == 2 else None


def _names(path: Path) -> int | None:
    """The number of names in a .names.txt: one per line, each ended by a newline."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return None


def is_ours(kind: str, path: Path) -> bool:
    """Whether `path` is a file resnetlab wrote as `kind` ("onnx", "torchscript", "safetensors" for
    exports; "embeddings.safetensors", "embeddings.npy" and "embeddings.names.txt" for embed)."""
    if kind == "onnx":
        return _onnx_is_ours(path)
    if kind == "torchscript":
        return _torchscript_is_ours(path)
    if kind == "safetensors":
        return "resnetlab" in safetensors_metadata(path)
    if kind == "embeddings.safetensors":
        meta = safetensors_metadata(path)
        try:
            return isinstance(json.loads(meta.get("names", "")), list)
        except ValueError:
            return False
    # embed's .npy and .names.txt belong together: a pair with one row per name
    npy = path.with_suffix("").with_suffix(".npy") if kind == "embeddings.names.txt" else path  # X.names.txt: X.npy
    names = npy.with_suffix(".names.txt")
    rows = _npy_rows(npy)
    return rows is not None and names.is_file() and _names(names) == rows


def refuse_foreign(path, kind: str, what: str) -> None:
    """A UserError now, before any work, when `path` holds something that is not an earlier `kind`
    written by resnetlab (`what` names it in the message, e.g. "an ONNX export"). An empty file is
    taken (it holds nothing); a symbolic link is judged by the file it points to."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return  # nothing there (a folder or a special file is refused by the write's own checks)
    except OSError:
        return
    if not is_ours(kind, path):
        raise UserError(f"{option('--out ', '')}{path} already exists and is not {what} written by resnetlab; it would "
                        f"be replaced. Remove it first or choose another {option('--out', 'out path')}")
