"""Checkpoints written atomically with their digest, read without running pickled code.

What a checkpoint holds is described once, in engine/records.py (`Checkpoint` = an `Artifact`
plus an optional `TrainingState`, format "resnetlab-checkpoint-v1").

`load_checkpoint(path)` reads one (a RUN_DIR means RUN_DIR/checkpoints/best.pt, or last.pt if
there is no best) and refuses it when its digest does not match (flipped bits, an edited or
truncated file); files written before the digest existed load unchecked. `model_from_checkpoint(...)`
rebuilds (model, normalizer, classes, config).
"""
from __future__ import annotations

import errno
import hashlib
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import Config, config_from_dict
from resnetlab.errors import UserError, first_line
from resnetlab.files import atomic_write, special_kind, storage_error
from resnetlab.guest import kept_rng
from resnetlab.models.weights import feed_tensor

from .records import CHECKPOINT_FORMAT, Artifact, Checkpoint, check_checkpoint_format

FORMAT = CHECKPOINT_FORMAT  # the checkpoint format this version writes and reads (engine/records.py)


def save_checkpoint(ckpt: Checkpoint, path) -> None:
    """Write atomically (resnetlab.files.atomic_write) with its digest: a crash or a full disk at
    any point leaves the previous checkpoint at `path` intact."""
    path = Path(path)
    existed = path.exists()
    content = ckpt.to_dict()
    payload = {**content, "digest": payload_digest(content)}
    try:
        with atomic_write(path) as f:
            writer = _WriteAll(f)
            try:
                torch.save(payload, writer)
            except RuntimeError as err:
                if writer.error is None:
                    raise
                raise writer.error from err  # the storage's own reason (atomic_write reports it), or the Ctrl-C
    except RuntimeError as err:  # torch's zip writer failed without an OSError we could see
        raise storage_error(path, f"the write failed: {first_line(err)}", existed) from err


class _WriteAll:
    """A file whose write() writes everything or raises, and remembers the OSError it raised:
    torch.save turns a full disk into "unexpected pos" (a short write, or our OSError swallowed
    on its way out of the zip writer), which says nothing to a user."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                written = self.f.write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "the file system accepted no more bytes")
                done += written
        except BaseException as err:  # also a second Ctrl-C here, which torch would turn into "unexpected pos"
            self.error = self.error or err
            raise
        return done

    def flush(self) -> None:
        self.f.flush()


def payload_digest(ckpt: dict) -> str:
    """SHA-256 over every key and value of the checkpoint except "digest", tensors by dtype, shape
    and bytes in logical order (so a channels_last copy hashes like a contiguous one)."""
    sha = hashlib.sha256()
    _feed(sha, {k: v for k, v in ckpt.items() if k != "digest"})
    return "sha256:" + sha.hexdigest()


def _feed(sha, value) -> None:
    if isinstance(value, torch.Tensor):
        feed_tensor(sha, value)
    elif isinstance(value, dict):
        sha.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(sha, key)
            _feed(sha, item)
    elif isinstance(value, (list, tuple)):
        sha.update(f"L{len(value)}".encode())
        for item in value:
            _feed(sha, item)
    else:  # str, int, float, bool, None: repr round-trips each exactly
        text = repr(value)
        sha.update(f"S{len(text)}:{text}".encode())


def checkpoint_path(path_or_run_dir) -> Path:
    """A checkpoint file, or for a run directory its checkpoints/best.pt (else last.pt)."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).exists():
                return _regular(path / "checkpoints" / name)  # a FIFO best.pt is said, not passed over for last.pt
        raise UserError(f"{path} is a folder without checkpoints/best.pt or checkpoints/last.pt; "
                        "pass a run directory written by `resnetlab train` or a .pt file")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return _regular(path)


def _regular(path: Path) -> Path:
    """`path` if it is a regular file: reading a FIFO waits for ever, a device never ends."""
    kind = special_kind(path)
    if kind:
        raise UserError(f"{path} is not a regular file ({kind}), not a checkpoint")
    return path


def run_dir_of(checkpoint) -> Path | None:
    """The run directory a checkpoint file belongs to (RUN/checkpoints/NAME.pt of a RUN with its
    config.yaml), or None for a file kept elsewhere."""
    path = Path(checkpoint)
    run = path.parent.parent
    return run if path.parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def refuse_out_over_checkpoint(out, source: str) -> None:
    """An output file (export, embed) that is the checkpoint being read (`source`, as load_source
    labels it), or any file of a run's checkpoints/, is refused: writing there destroyed the run's
    weights, and the next command on the run failed on a file it could no longer read."""
    out = Path(out)
    if out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise UserError(f"--out {out} is the checkpoint being read; write the output to another file")
    if run_dir_of(out) is not None:
        raise UserError(f"--out {out} is in the checkpoints of the run {run_dir_of(out)}; write the output elsewhere")


def load_checkpoint(path_or_run_dir) -> Checkpoint:
    from resnetlab.models.weights import names_python_objects, not_torch_file, refuse_nonfinite, torch_load

    path = checkpoint_path(path_or_run_dir)
    try:
        with open(path, "rb") as f:
            what = not_torch_file(f.read(4))
        if what:
            raise UserError(f"{path} is not a resnetlab checkpoint: not a file torch.save wrote ({what})")
        ckpt = torch_load(path)
    except UserError:
        raise
    except pickle.UnpicklingError as err:  # torch's text here spans lines and advises weights_only=False: never shown
        if not names_python_objects(err):  # not a pickle at all, or a damaged one
            raise UserError(f"{path} is not a readable resnetlab checkpoint (not a PyTorch file, or a damaged one)") from None
        raise UserError(f"{path} holds Python objects besides tensors and plain containers; resnetlab does not "
                        "unpickle those (that can run code from the file), and it is not a resnetlab checkpoint") from None
    except Exception as err:  # truncation, flipped bytes in the zip, not a torch file: all mean "not a checkpoint"
        # torch's words for a file cut short are an errno ("Invalid argument") or a paragraph on miniz
        cut = isinstance(err, OSError) or "zip archive" in str(err)
        raise UserError(f"{path} is not a readable resnetlab checkpoint ("
                        f"{'the file is cut short or damaged' if cut else first_line(err)})") from None
    check_checkpoint_format(ckpt, path)
    verify_digest(ckpt, path)
    record = Checkpoint.from_dict(ckpt, path)
    refuse_nonfinite(record.artifact.weights, path)  # else every prediction is NaN, printed as a class of probability NaN
    with torch.device("meta"), warnings.catch_warnings():
        # A model on the meta device has every shape and no storage: a cheap check that the weights
        # fit the model the checkpoint names, so every reader of a file gets one line naming it.
        warnings.simplefilter("ignore")  # torch warns that copying into meta tensors does nothing
        model_for_weights(record.artifact, path)
    return record


def verify_digest(ckpt: dict, path) -> None:
    """Refuse a checkpoint dict, as read from `path`, whose contents changed since it was written
    (none to check: older files)."""
    if "digest" in ckpt and ckpt["digest"] != payload_digest(ckpt):
        raise UserError(f"{path} is damaged: its contents do not match the SHA-256 digest written with it "
                        "(bits flipped on disk or in a copy, or the file was edited); use an intact copy")


def stored_config(path) -> dict | None:
    """The config dict a checkpoint was written with, read without its tensors (mmap) and without the
    checks of load_checkpoint, which the run makes when it loads the file; None when it cannot be read."""
    from resnetlab.models.weights import torch_load

    try:
        data = torch_load(Path(path), mmap=True)
    except Exception:  # damaged, or not ours: load_checkpoint says so in one line later
        return None
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) and config else None


def artifact_of(source) -> Artifact:
    """The Artifact of a Checkpoint, an Artifact, or a checkpoint file / run directory."""
    if isinstance(source, Checkpoint):
        return source.artifact
    return source if isinstance(source, Artifact) else load_checkpoint(source).artifact


def model_from_checkpoint(source):
    """(model in eval mode on CPU, normalizer, classes, config) from a Checkpoint, an Artifact or a path."""
    from resnetlab.data import Normalizer

    where = "the checkpoint" if isinstance(source, (Checkpoint, Artifact)) else str(source)
    artifact = artifact_of(source)
    model = model_for_weights(artifact, where)
    model.eval()
    config: Config = config_from_dict(artifact.config)
    return model, Normalizer.from_state(artifact.normalizer), list(artifact.classes), config


def model_for_weights(artifact: Artifact, where) -> torch.nn.Module:
    """The artifact's model with its weights, or one line saying why they do not fit."""
    from resnetlab.models import create_model, load_weights

    name = artifact.model_name
    try:
        with kept_rng():  # its random init, overwritten below, must not move the caller's torch stream
            model = create_model(name, num_classes=artifact.num_classes, **artifact.model_kwargs)
    except UserError as err:  # a model name this version does not know
        raise UserError(f"{where}: {err}") from None
    except TypeError as err:
        raise UserError(f"{where}: model {name!r} cannot be built with its saved arguments ({err})") from None
    try:
        load_weights(model, artifact.weights)
    except UserError as err:
        raise UserError(f"{where} says its model is {name}, but {err}") from None
    return model


def clean_state_dict(model: torch.nn.Module) -> dict:
    """The model's weights without the DDP / torch.compile wrappers' prefixes, on CPU."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def seed_rngs(seed: int) -> None:
    """Seed every global RNG capture_rng saves, so that a checkpoint holds states that follow from
    train.seed (numpy's and Python's were left as each process found them: entropy from the OS)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> dict:
    """Every global RNG the run might draw from, in weights_only-loadable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))
