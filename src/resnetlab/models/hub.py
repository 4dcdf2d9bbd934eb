"""Fetching published weights: torch.hub's cache and downloader, a hash check, atomic placement.

Files live where torch.hub keeps them, `$TORCH_HOME/hub/checkpoints/<filename>` (torch.hub.get_dir),
so a file torchvision already downloaded is used without any network. A download goes to a
staging name beside the cache file through `torch.hub.download_url_to_file` (progress bar, SHA-256
check), is then checked as weights (a file without a published digest at least has to parse), and
only then is renamed into place: a failed, interrupted or wrong-hash download never leaves a file
under the cache name. Every use re-checks the digest of the cached file, so a damaged or
hand-placed wrong file is refused rather than loaded.

RESNETLAB_WEIGHTS_MIRROR=URL fetches `URL/<host>/<path>` instead of each published
`https://<host>/<path>` (air-gapped sites; tests); a plain folder is taken as its file:// URL.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from resnetlab.errors import UserError

from .pretrained import PretrainedWeights

MIRROR_ENV = "RESNETLAB_WEIGHTS_MIRROR"
CHUNK = 1 << 20


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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _check_readable(entry: PretrainedWeights, path: Path) -> None:
    """Parse the file as what it claims to be: catches a truncated download without a digest."""
    from .weights import read_state_dict

    try:
        read_state_dict(path)
    except UserError as err:
        raise UserError(f"{entry.name}: {err}") from None


def fetch(entry: PretrainedWeights, progress: bool = True, replace_damaged: bool = False) -> Path:
    """The checked cache file of `entry`, downloaded first if it is not there. A cached file that is
    not the published one is refused, or with `replace_damaged` (`resnetlab weights fetch`) downloaded
    again: the good download replaces it in one rename; a failed one leaves it as it was."""
    path = cached_file(entry)
    if path.is_file():
        try:
            check_cached(entry, path)
            return path
        except UserError:
            if not replace_damaged:
                raise
    failures = []
    for url in download_urls(entry):
        try:
            _download(entry, url, path, progress)
            return path
        except _DownloadFailed as err:
            failures.append(f"{url}: {err}")
    raise UserError(f"could not download {entry.name} ({'; '.join(failures)}). Nothing was written to the cache. "
                    f"Without network access, fetch {entry.urls[0]} elsewhere and put it at {path} "
                    f"(or set {MIRROR_ENV} to a mirror)")


class _DownloadFailed(Exception):
    """One URL did not give the published file; the message says why."""


def _download(entry: PretrainedWeights, url: str, path: Path, progress: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the weights cache {path.parent} ({err.strerror or err}); "
                        "set TORCH_HOME to a writable folder") from None
    staging = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.download")
    try:
        try:
            torch.hub.download_url_to_file(url, str(staging), hash_prefix=expected_digest(entry), progress=progress)
        except RuntimeError as err:
            if "invalid hash value" not in str(err):
                raise
            raise _DownloadFailed(f"the file differs from the published one ({err}): cut short, or changed on "
                                  "the server") from None
        except urllib.error.HTTPError as err:
            raise _DownloadFailed(f"HTTP {err.code} {err.reason}") from None
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, resets, timeouts, bad URLs
            raise _DownloadFailed(getattr(err, "reason", None) or str(err) or type(err).__name__) from None
        if expected_digest(entry) is None:
            try:
                _check_readable(entry, staging)
            except UserError as err:
                raise _DownloadFailed(f"not usable weights ({err})") from None
        os.replace(staging, path)  # same folder: atomic
    finally:
        staging.unlink(missing_ok=True)
        for partial in path.parent.glob(f"{staging.name}.*.partial"):  # torch.hub's own, left when it fails early
            partial.unlink(missing_ok=True)


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
    """Raise, before any download, unless `model` has the architecture the weights were trained for."""
    from .registry import create_model

    with torch.device("meta"):  # shapes only
        published = create_model(entry.model, num_classes=entry.num_classes, **entry.kwargs)
    skip = ("fc.weight", "fc.bias") if ignore_mismatched_head else ()
    want = {k: tuple(v.shape) for k, v in published.state_dict().items() if k not in skip}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}
    if want != have:
        differ = sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise UserError(f"weights {entry.name} are for {entry.model}{_kwargs_text(entry)} with "
                        f"{entry.num_classes} classes; this model differs in {len(differ)} tensors "
                        f"(first: {differ[0]})")


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
