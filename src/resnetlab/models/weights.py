"""Loading weights from the layouts people actually have, without ever running code from a file.

Accepted: a state dict or a path to one (`torch.save` files are read with
`weights_only=True`; safetensors files with safetensors), wrapped or not in {"state_dict": ...} /
{"model": ...} (resnetlab checkpoints too), saved under DataParallel/DDP ("module." prefix) or
torch.compile ("_orig_mod."), in any layout of models/layouts.py: torchvision's, timm's and
chenyaofo's names load as they are; akamaster's CIFAR layout (`linear` classifier, option A padded
on both sides) is renamed and its channels reordered so the outputs are the publisher's.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from resnetlab.errors import UserError, expect_path, expect_type, first_line
from resnetlab.files import special_kind

from . import identify, layouts

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")
DIGEST_KEY = "resnetlab_sha256"  # in the metadata of the safetensors files save_safetensors writes
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; the legacy format is a bare pickle
# ... which opens with torch's magic number pickled (LONG1, 10 bytes; after a FRAME from protocol 4 on):
# any other pickle is pickle.dump's, not torch.save's
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # classifier keys left at their new init
    layout: str = "resnetlab"  # the layout the tensors were read in (models/layouts.py)


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a path or a (possibly wrapped) dict, with the DataParallel /
    torch.compile prefixes removed and the names otherwise as saved."""
    if isinstance(source, (str, os.PathLike)):
        source = _read_file(expect_path(source, "the weights file"))  # "~/w.pt" as a shell reads it; "" refused
    if not isinstance(source, dict):
        raise UserError(f"weights must be a state dict or a path to one, got {type(source).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(source.get(key), dict):
            return read_state_dict(source[key])
    tensors = {k: v for k, v in source.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"no tensors found in the weights (top-level keys: {', '.join(map(str, list(source)[:10]))})")
    return {_normalise(k): v for k, v in tensors.items()}


def _read_file(path: Path):
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a weights file; {_folder_hint(path)}")
    if not path.is_file():
        kind = special_kind(path)
        raise UserError(f"{path} is not a regular file ({kind}), not weights" if kind else f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"{path} is not a valid safetensors file ({first_line(err)})") from None
        written = safetensors_metadata(path).get(DIGEST_KEY)
        if written is not None and written != tensors_digest(tensors):  # safetensors checks the header, not the data
            raise UserError(f"{path} is damaged: its tensors do not match the SHA-256 digest written with them (bits "
                            "flipped on disk or in a copy, or the file was edited); use an intact copy")
        return tensors
    what = not_torch_file(head)
    if what:
        raise UserError(f"{path} is not a PyTorch or safetensors weights file ({what})")
    try:
        return torch_load(path)
    except UserError:
        raise
    except pickle.UnpicklingError as err:
        if not names_python_objects(err):  # e.g. torch's legacy format pickled with protocol 4+
            raise UserError(f"{path} is in a form torch's safe loader cannot read ({_unpickler_reason(err)}); "
                            "re-save it with torch.save(model.state_dict(), ...) or as safetensors") from None
        raise UserError(f"{path} needs arbitrary code to unpickle, which resnetlab refuses to run. "
                        "Re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or "
                        "as safetensors.") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise UserError(f"{path} is not a readable PyTorch weights file (truncated or corrupt?): "
                        f"{first_line(err)}") from None


def _folder_hint(path: Path) -> str:
    """Which file to pass instead: choosing a run directory's checkpoint (best, else last) is the engine's
    (engine.checkpoint.checkpoint_path), and models/ may not import the engine, so the files are named."""
    found = sorted(str(p) for p in (path / "checkpoints").glob("*.pt"))
    if found:
        return f"pass one of the checkpoints of this run: {', '.join(found)}"
    return "pass the weights file itself (.pt, .pth or .safetensors)"


def torch_load(path: Path, mmap: bool = False):
    """torch.load with weights_only=True (never unpickles arbitrary objects) and torch's own warnings
    kept quiet; a TorchScript export and a plain pickle are refused in one line each, never with
    torch's advice to turn weights_only off."""
    if any(r.filename.endswith("/constants.pkl") or "/code/" in r.filename for r in _zip_records(path)):
        # torch.jit.save's zip holds code/ and constants.pkl besides the tensors; torch.save's does not
        raise UserError(f"{path} is a TorchScript export, not a checkpoint: load it with torch.jit.load, or pass "
                        "the checkpoint it was exported from")
    if _is_plain_pickle(path):
        raise UserError(f"{path} is a plain Python pickle (pickle.dump), not a torch.save file: resnetlab does not "
                        "unpickle those (that can run code from the file); re-save it with "
                        "torch.save(model.state_dict(), ...) or as safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Detected pickle protocol ...", "looks like a TorchScript archive ..."
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def not_torch_file(head: bytes) -> str | None:
    """Why a file starting with `head` is not one torch.save wrote ("it is empty", "it starts with
    b'...'"), or None when it may be: said before torch.load, whose errors for such files are things
    like "list index out of range"."""
    if head.startswith(TORCH_MAGIC):
        return None
    return "it is empty" if not head else f"it starts with {head[:4]!r}"


def names_python_objects(err: pickle.UnpicklingError) -> bool:
    """Whether torch's safe unpickler refused the file because it names a Python class or function to
    build (a GLOBAL it does not allow), rather than because the bytes are damaged or in a form it cannot
    read ("Unsupported operand"): the one case where the file needs arbitrary code to load."""
    return "GLOBAL" in str(err)


def _zip_records(path: Path) -> list[zipfile.ZipInfo]:
    """The records a zip's central directory lists (none decompressed; [] for no zip), a zip bomb refused:
    torch's reader inflates DEFLATE records in memory before any check (2 MB of deflated zeros is 2 GiB of
    RAM). torch.save writes its records STORED, so they never add up to more than the file holds; twice
    the file (a re-zipped copy: weights compress little) and 1 MiB is refused beyond."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except Exception as err:  # hostile bytes raise BadZipFile, ValueError, struct.error, ...
        with open(path, "rb") as f:  # torch reads any file starting with PK as a zip: never one unchecked
            if f.read(4) == TORCH_MAGIC[0]:  # an OSError: callers say the file is cut short or damaged
                raise OSError(f"its zip directory cannot be read ({first_line(err)})") from None
        return []
    size, total = path.stat().st_size, sum(r.file_size for r in records)
    if total > 2 * size + 2**20:
        raise UserError(f"{path} would unpack to {total / 2**20:,.0f} MiB in memory from {size / 2**20:,.1f} MiB "
                        "on disk, which no torch.save file does (it stores its records uncompressed): "
                        "refused as a zip bomb")
    return records


def _unpickler_reason(err: Exception) -> str:
    """The WeightsUnpickler's own reason, without torch's advice around it to turn weights_only off."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    return first_line(tail) or "unknown reason"


def _is_plain_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False  # torch.load says why
    return head.startswith(b"\x80") and LEGACY_MAGIC not in head


def _normalise(key: str) -> str:
    for prefix in PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_weights(model: nn.Module, source, *, ignore_mismatched_head: bool = False,
                 layout: str = "auto", label=None) -> LoadReport:
    """Load weights into `model`, or raise a UserError naming every missing, unexpected and
    wrongly shaped key, integer tensors for floating ones, or NaN/inf values. With
    ignore_mismatched_head, a classifier of another class count is skipped (fine-tuning to new
    classes) and reported. `layout` names the publisher's conventions (models/layouts.py); "auto"
    tells akamaster's CIFAR layout by its `linear` classifier. `label` names the weights in messages
    (default: the file, or "the state dict")."""
    expect_type(model, nn.Module, "load_weights(model, source): model must be an nn.Module such as "
                                  "create_model('resnet20')")
    state = read_state_dict(source)
    layout = layouts.check_layout(layout)
    if layout == "auto":
        layout = layouts.detect(state)
    state = layouts.rename(state, layout)
    own = model.state_dict()
    report = LoadReport(layout=layout)
    if ignore_mismatched_head:
        for key in ("fc.weight", "fc.bias"):
            if key in state and key in own and state[key].shape != own[key].shape:
                del state[key]
                report.skipped.append(key)
    # Old checkpoints predate BN's num_batches_tracked; it only matters for momentum=None.
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = sorted(set(own) - set(state) - set(report.skipped))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        other = identify.mismatch(state, own)  # another registered network: said by name, not by its keys
        raise other or UserError("weights do not fit the model: " + "; ".join(parts) + _hint(state, own))
    # load_state_dict casts silently: integer weights (a quantised or edited file) would load as floats
    cast = [f"{k} ({state[k].dtype})" for k in sorted(state) if own[k].is_floating_point() and not state[k].is_floating_point()]
    if cast:
        raise UserError(f"weights do not fit the model: {count_text(cast)} not floating point where the model's "
                        f"are: {', '.join(cast[:3])}{' ...' if len(cast) > 3 else ''}")
    refuse_nonfinite(state, label or ("the state dict" if isinstance(source, dict) else source))
    state = layouts.reorder(state, model, layout)
    model.load_state_dict({**own, **state}, strict=True)
    report.loaded = sorted(state)
    return report


def count_text(keys: list) -> str:
    return f"{len(keys)} tensor{'s' * (len(keys) != 1)}"


def refuse_nonfinite(weights: dict, label) -> None:
    """Weights holding NaN or inf (an edited or damaged file, a diverged run's) are refused in one line:
    predict would print NaN probabilities, a fine-tuning run would call its loss diverged and advise
    a lower lr, a linear probe would fit on NaN features."""
    def finite(v: torch.Tensor) -> bool:  # isfinite has no float8 kernel: those are judged as float32
        return bool(torch.isfinite(v.float() if v.element_size() == 1 else v).all())

    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not finite(v)]
    if bad:
        raise UserError(f"{label} holds NaN or infinite values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
                        "weights of a diverged run or a damaged file; choose other weights")


def _hint(state: dict, own: dict) -> str:
    """What a mismatch of shortcut tensors usually means."""
    in_file, in_model = (any(".downsample." in k and not k.endswith("num_batches_tracked") for k in d)
                         for d in (state, own))
    if in_model and not in_file:
        return ". The weights have no projection shortcuts: build the model with shortcut='A'"
    if in_file and not in_model:
        return ". The weights have projection shortcuts: build the model with shortcut='B' (or 'C')"
    return ""


def save_safetensors(model: nn.Module, path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's weights as safetensors (contiguous copies; shared storage is not allowed),
    atomically and with the permissions the umask gives (safetensors' own writer makes 0600 files)."""
    from safetensors.torch import save

    from resnetlab.files import atomic_write
    from resnetlab.models.safetensors_header import sorted_metadata

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:  # metadata keys sorted: the writer's own order changed from run to run
        f.writelines(sorted_metadata(save(tensors, metadata={**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)})))


def safetensors_metadata(path) -> dict[str, str]:
    """The string metadata in a safetensors file's header (its tensors are not read); {} for a file
    that is not one, or has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # safetensors raises its own error types
        return {}


def feed_tensor(sha, t: torch.Tensor, label: str = "T") -> None:
    """Hash a tensor into `sha` after `label`: its dtype, shape and bytes in logical order (a
    channels_last copy hashes like a contiguous one). The digests of checkpoints and of safetensors files."""
    t = t.detach().cpu().contiguous()
    sha.update(f"{label}{t.dtype}{tuple(t.shape)}".encode())
    sha.update(t.reshape(-1).view(torch.uint8).numpy())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors by name (sorted), dtype, shape and bytes: written into the safetensors
    files resnetlab saves and checked when they are read, as a checkpoint's digest is."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        feed_tensor(sha, tensors[name], f"{name}\0")
    return "sha256:" + sha.hexdigest()
