"""The compiled-model cache: AOTInductor packages built once per checkpoint and machine.

A package (.pt2) holds a shared library that loading it executes, so only packages this module
built itself are ever loaded, and only from its own folder: $RESNETLAB_CACHE/compiled, else
$XDG_CACHE_HOME/resnetlab/compiled, else ~/.cache/resnetlab/compiled, kept private (mode 0700,
owned by the user; a folder that is not is never read). An entry is named by the SHA-256 of its
key: the weights' own digest, the architecture (the folded model's repr and the source of
resnetlab.models), the precision, memory format, input size and dtypes, torch and Python versions and the
CPU's instruction-set flags. Beside each package a JSON file holds the full key and the
package's SHA-256; an entry whose key differs or whose bytes do not match, that is not a regular
file of ours, or that fails to load, is removed and rebuilt. Both files are written atomically
(resnetlab.files), so a killed build leaves no entry, only a temporary file that the next run
removes. A folder that cannot be written is not an error: the model is compiled in memory, and
the one line that says it is compiling says so. A package is loaded once per process and file
content, and shared by every model that runs it (`_load`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from resnetlab.errors import ResnetlabWarning
from resnetlab.files import (SHARED_IDLE_S, StorageError, atomic_write, cache_home, remove_stale_temporaries,
                             write_text_atomic)
from resnetlab.models.hub import sha256_of

FORMAT = 2  # bump when the key or the package's calling convention changes (2: the input's dtype in the key)
INPUT_DTYPE = torch.float32  # what a package is built for and fed, whatever torch's default dtype
ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")  # the flags inductor's generated code depends on


def cache_dir() -> Path:
    return cache_home() / "compiled"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's state (before folding)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _architecture_digest(model: nn.Module) -> str:
    """The graph depends on the modules (repr: strides, shortcuts) and on their forward code."""
    import resnetlab.models

    digest = hashlib.sha256(repr(model).encode())
    for source in sorted(Path(resnetlab.models.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def entry_key(name: str, weights: str, model: nn.Module, precision: str, memory_format: str, size: int) -> dict:
    from resnetlab.cpu import cpu_flags

    return {"format": FORMAT, "model": name, "outputs": ["logits", "features"], "weights_sha256": weights,
            "architecture_sha256": _architecture_digest(model), "precision": precision,
            "memory_format": memory_format, "input": [3, size, size], "batch": "dynamic",
            "input_dtype": str(INPUT_DTYPE), "parameter_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(ISA_PREFIXES))}


def compile_package(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    """torch.export with a dynamic batch, then AOTInductor into `out`. Freezing (weights as
    constants, pre-packed for oneDNN) applies only without grad mode: it made the ResNet-20
    package 1.3-1.4x faster."""
    from torch.export import Dim

    from resnetlab.guest import kept_compiler_state

    # predict's first call compiles: the caller's process is left as found, as a guest_call leaves it
    with kept_compiler_state(), torch.no_grad(), torch._inductor.config.patch(freezing=True):
        program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch", min=1)},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(out))


class Package:
    """A loaded package: fp32 (B, 3, S, S) channels_last in, [fp32 logits, fp32 features] out."""

    def __init__(self, path: Path):
        # torch's own loader class, as torch._inductor.aoti_load_package uses it; calling it
        # directly spares a cache hit the 3-4 s import of the compiler stack (torch._dynamo).
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.loader.run([x])


_LOADED: dict[str, tuple[str, Package]] = {}  # a package file -> (the SHA-256 of its bytes, its loaded Package)
_LOADED_LOCK = threading.Lock()


def _load(path: Path, sha256: str) -> Package:
    """One loaded Package per package file and content in this process, shared by every model that
    runs it: torch's AOTI loader does not give back the memory of a loader that is dropped, so each
    `resnetlab.load` loading its own copy grew the process by the package's size. A file rebuilt
    since (other bytes) is loaded again, never served stale."""
    where = str(path.resolve())
    with _LOADED_LOCK:
        found = _LOADED.get(where)
        if found is None or found[0] != sha256:
            found = _LOADED[where] = (sha256, Package(path))
        return found[1]


def unusable(folder: Path) -> str | None:
    """Why `folder` cannot hold compiled models (None: it can, and is now private)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = folder.stat()
    except OSError as e:
        return f"{folder} cannot be created ({e.strerror or e})"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{folder} belongs to another user"
    if st.st_mode & 0o077:
        try:
            folder.chmod(0o700)
        except OSError as e:
            return f"{folder} cannot be made private ({e.strerror or e})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    remove_stale_temporaries(folder, idle_s=SHARED_IDLE_S)
    return None


def _ours(path: Path) -> bool:
    st = path.lstat()
    return path.is_file() and not path.is_symlink() and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def load_entry(package: Path, meta: Path, key: dict):
    """The loaded package of a valid entry, else None (a damaged or foreign entry is removed)."""
    if not package.exists() and not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("key") == key and _ours(package) and info.get("sha256") == sha256_of(package):
            return _load(package, info["sha256"])
    except Exception:  # noqa: BLE001  (unreadable JSON or package, a library that fails to load: rebuild)
        pass
    for path in (package, meta):
        path.unlink(missing_ok=True)
    return None


_EXPORTING = threading.Lock()  # torch.export is not thread-safe: two threads' first predictions at once both failed
_KEYS_LOCK, _KEY_LOCKS = threading.Lock(), {}  # an entry's lock: one thread looks up or builds it at a time


def load_or_build(module: nn.Module, example: torch.Tensor, key: dict, what: str, estimate_s: int):
    """The loaded package for `key`: from the cache, or compiled now (one line on stderr). Threads
    after one entry wait for each other (the one that waited finds the package the other built);
    threads after different entries wait only for each other's compiling, never for a cache hit."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    with _KEYS_LOCK:
        entry_lock = _KEY_LOCKS.setdefault(digest, threading.Lock())
    with entry_lock:
        return _load_or_build(module, example, key, what, estimate_s, digest)


def _load_or_build(module: nn.Module, example: torch.Tensor, key: dict, what: str, estimate_s: int, digest: str):
    folder = cache_dir()
    package, meta = folder / f"{digest}.pt2", folder / f"{digest}.json"
    problem = unusable(folder)
    if problem is None and (runner := load_entry(package, meta, key)) is not None:
        return runner
    note = "" if problem is None else f"; not cached, since {problem}: every run pays it"
    print(f"resnetlab: compiling {what} (once per checkpoint and machine, ~{estimate_s} s{note})...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="resnetlab-compile-") as tmp:
        built = Path(tmp) / "model.pt2"
        with _EXPORTING:
            compile_package(module, example, built)
        if problem is None:
            try:
                with atomic_write(package) as f, open(built, "rb") as src:
                    shutil.copyfileobj(src, f)
                digest = sha256_of(package)
                write_text_atomic(meta, json.dumps({"key": key, "sha256": digest}, indent=1))
                return _load(package, digest)
            except (OSError, StorageError) as e:  # a full disk while storing (atomic_write raises StorageError,
                # not an OSError): the build is still good, only the cache misses it
                warnings.warn(f"could not keep the compiled model in {folder} ({e}); the next run compiles again",
                              ResnetlabWarning, stacklevel=2)
        return Package(built)  # loaded (the library copied out) before the temporary folder goes
