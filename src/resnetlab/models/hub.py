"""Fetching published weights: torch.hub's cache, a hash check, atomic placement.

Files live where torch.hub keeps them, `$TORCH_HOME/hub/checkpoints/<filename>` (torch.hub.get_dir),
so a file torchvision already downloaded is used without any network. A download goes through
resnetlab.downloads (progress bar, SHA-256 prefix check as torch.hub's, the limits of a server
that stalls, drips or sends without end), is checked as weights where no digest is published (the
file at least has to parse) and only then renamed into place: a failed, interrupted, stalled,
endless or wrong-hash download never leaves a file under the cache name (the staging files of one
killed outright are swept by the next fetch).
Every use re-checks the digest of the cached file, so a damaged or hand-placed wrong file is
refused rather than loaded.

RESNETLAB_WEIGHTS_MIRROR=URL fetches `URL/<host>/<path>` instead of each published
`https://<host>/<path>` (air-gapped sites; tests); a plain folder is taken as its file:// URL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from resnetlab.downloads import DownloadFailed, download, failure_message, file_digest, remove_stale_downloads
from resnetlab.errors import UserError, count
from resnetlab.files import StorageError, check_writable

from .pretrained import PretrainedWeights

MIRROR_ENV = "RESNETLAB_WEIGHTS_MIRROR"


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(entry: PretrainedWeights) -> Path:
    return cache_dir() / entry.filename


def download_urls(entry: PretrainedWeights) -> list[str]:
    """The URLs to try, rewritten to the mirror when RESNETLAB_WEIGHTS_MIRROR is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and "://" not in mirror:  # a plain folder: the file:// URL of it
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return [mirrored(url, mirror) if mirror else url for url in entry.urls]


def mirrored(url: str, mirror: str) -> str:
    """https://host/a/b.pth -> MIRROR/host/a/b.pth"""
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def expected_digest(entry: PretrainedWeights) -> str | None:
    """The longest published prefix of the file's SHA-256 (the full digest where known)."""
    return entry.sha256 or entry.hash_prefix


def check_cached(entry: PretrainedWeights, path: Path) -> None:
    """Raise unless `path` is the published file (by digest; by format where none is published)."""
    want = expected_digest(entry)
    if want is None:
        _check_readable(entry, path)
        return
    got = sha256_of(path)
    if not got.startswith(want):
        raise UserError(f"{path} is not the published {entry.name} (SHA-256 {got[:16]}..., expected "
                        f"{want[:16]}...); `resnetlab weights fetch {entry.name}` downloads it again in its place")


def _check_readable(entry: PretrainedWeights, path: Path, shown: str | None = None) -> None:
    """Parse the file as what it claims to be and hold its tensors' names and shapes (in the entry's
    layout) to the entry's model: catches a truncated download, or another file, without a digest."""
    from . import layouts
    from .weights import read_state_dict

    try:
        state = layouts.rename(read_state_dict(path), entry.layout)
    except UserError as err:  # a download's staging file is deleted by now: say "the downloaded file"
        raise UserError(f"{entry.name}: {str(err).replace(str(path), shown) if shown else err}") from None
    counters = lambda shapes: {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}  # noqa: E731
    differ = _differences(counters(_shapes(_published_model(entry))), counters(_shapes(state)))
    if differ:
        raise UserError(f"{shown or path} is not the weights of {entry.name} ({entry.model}{_kwargs_text(entry)}): "
                        f"{count(len(differ), 'tensor')} missing, unexpected or of another shape (first: {differ[0]})")


def fetch(entry: PretrainedWeights, progress: bool = True, replace_damaged: bool = False) -> Path:
    """The checked cache file of `entry`, downloaded first if it is not there. A cached file that is
    not the published one is refused, or with `replace_damaged` (`resnetlab weights fetch`) downloaded
    again: the good download replaces it in one rename; a failed one leaves it as it was."""
    path, damaged = cached_file(entry), None
    if path.is_file():
        try:
            check_cached(entry, path)
            return path
        except UserError as err:
            if not replace_damaged:
                raise
            damaged = err
    _check_cache_writable(path)
    remove_stale_downloads(path)
    failures = []
    for url in download_urls(entry):
        try:
            _download(entry, url, path, progress)
            return path
        except DownloadFailed as err:
            failures.append(f"{url}: {err}")
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    kept = (f"The damaged file there is as it was ({damaged})" if damaged else "Nothing was written to the cache")
    where = f"(the mirror {MIRROR_ENV}={mirror} is in use)" if mirror else f"(or set {MIRROR_ENV} to a mirror)"
    raise UserError(f"{failure_message(entry.name, failures, kept, entry.urls[0], path)} {where}")


def _check_cache_writable(path: Path) -> None:
    """A read-only or full cache is the user's to fix, and says so before any download starts."""
    try:
        check_writable(path)
    except StorageError as err:
        raise UserError(f"cannot write the weights cache {path.parent} ({err.reason}); "
                        "set TORCH_HOME to a writable folder") from None


def size_limit(entry: PretrainedWeights) -> int:
    """The bytes a download of `entry` may have: its published size and a tenth more (sizes are published
    rounded), or where none is, twice its model's tensors in float32 and 16 MB (pickle framing, extra keys)."""
    if entry.file_size_mb is not None:
        return int(entry.file_size_mb * 1.1e6) + (1 << 20)
    return 8 * sum(t.numel() for t in _published_model(entry).state_dict().values()) + (16 << 20)


def _download(entry: PretrainedWeights, url: str, path: Path, progress: bool) -> None:
    want = expected_digest(entry)

    def usable(staged: Path) -> None:
        try:
            _check_readable(entry, staged, "the downloaded file")
        except UserError as err:
            raise DownloadFailed(f"not usable weights ({err})") from None

    try:
        download(url, path, size_limit(entry), digest=("sha256", want) if want else None,
                 accept=None if want else usable, progress=progress)
    except StorageError as err:
        raise UserError(f"cannot write the weights cache {path.parent} ({err.reason}); "
                        "set TORCH_HOME to a writable folder") from None


@dataclass(frozen=True)
class CacheCheck:
    name: str
    path: str
    ok: bool
    status: str  # "ok" | "format ok (no published digest)" | why it is not the published file


def verify_cache(entries) -> list[CacheCheck]:
    """Re-check every cached file of `entries` (files not downloaded are not listed)."""
    out = []
    for entry in entries:
        path = cached_file(entry)
        if not path.is_file():
            continue
        try:
            check_cached(entry, path)
            out.append(CacheCheck(entry.name, str(path), True, "ok" if expected_digest(entry) else
                                  "format ok (no published digest)"))
        except UserError as err:
            out.append(CacheCheck(entry.name, str(path), False, str(err)))
    return out


def check_fits(model: torch.nn.Module, entry: PretrainedWeights, ignore_mismatched_head: bool = False) -> None:
    """Raise, before any download, unless `model` has the architecture the weights were trained for:
    every tensor's shape, and what shapes do not show, each convolution's and pooling's stride,
    padding, dilation and groups (stride_on='1x1' moves a stride and keeps every shape)."""
    differ = architecture_differences(_published_model(entry), model, ignore_mismatched_head)
    if differ:
        raise UserError(f"weights {entry.name} are for {entry.model}{_kwargs_text(entry)} with "
                        f"{entry.num_classes} classes; this model differs in {count(len(differ), 'place')} "
                        f"(first: {differ[0]})")


def architecture_differences(reference: torch.nn.Module, model: torch.nn.Module, skip_head: bool = False) -> list[str]:
    """Where `model` is built otherwise than `reference` (a meta-device build will do): tensor names and
    shapes, then each convolution's and pooling's stride, padding, dilation and groups (no shape shows
    stride_on='1x1'); the classifier left out with skip_head."""
    skip = ("fc.weight", "fc.bias") if skip_head else ()
    return (_differences(_shapes(reference, skip), _shapes(model, skip))
            + _differences(_layer_settings(reference), _layer_settings(model)))


def _published_model(entry: PretrainedWeights) -> torch.nn.Module:
    from .registry import create_model

    with torch.device("meta"):  # shapes only
        return create_model(entry.model, num_classes=entry.num_classes, **entry.kwargs)


def _shapes(model_or_state, skip=()) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return {k: tuple(v.shape) for k, v in state.items() if k not in skip}


def _layer_settings(model: torch.nn.Module) -> dict:
    return {name: tuple(str(getattr(m, a, None)) for a in ("stride", "padding", "dilation", "groups"))
            for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d))}


def _differences(want: dict, have: dict) -> list[str]:
    """The names in one and not the other, then those whose values differ."""
    return sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have) if want[k] != have[k])


def load_pretrained(model: torch.nn.Module, entry: PretrainedWeights, *, ignore_mismatched_head: bool = False,
                    progress: bool = True):
    """Fetch `entry` and load it into `model` in the publisher's layout (LoadReport)."""
    from .weights import load_weights

    check_fits(model, entry, ignore_mismatched_head)
    path = fetch(entry, progress)
    try:
        return load_weights(model, path, ignore_mismatched_head=ignore_mismatched_head, layout=entry.layout)
    except UserError as err:
        raise UserError(f"{entry.name} (for {entry.model}{_kwargs_text(entry)}): {err}") from None


def pretrained_model(entry: PretrainedWeights, progress: bool = True) -> torch.nn.Module:
    """The entry's own model (its architecture and classes) with its weights, in eval mode."""
    from .registry import create_model

    model = create_model(entry.model, num_classes=entry.num_classes, **entry.kwargs)
    load_pretrained(model, entry, progress=progress)
    return model.eval()


def _kwargs_text(entry: PretrainedWeights) -> str:
    return "".join(f", {k}={v!r}" for k, v in entry.model_kwargs)
