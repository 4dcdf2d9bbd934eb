"""Downloading a published file (weights: models/hub.py; a CIFAR archive: data/cifar.py) so that a
misbehaving server or an interruption never leaves anything that looks valid, and never hangs.

One streaming loop: the response is read as it comes, into a staging file beside the target
(`.<name>.<pid>.<8 hex>.download`), through the digest (a SHA-256 prefix as torch.hub checks it,
or an MD5) and a tqdm progress bar, and renamed into place only once the digest (and the caller's
`accept` check) passed. On any error, Ctrl-C included, the staging file is removed; one of a
process killed outright is swept by the next download of that file (`remove_stale_downloads`).
The download is given up, in one line (DownloadFailed) that says why, where the server
- sends nothing for STALL_TIMEOUT_S seconds (the socket's own timeout, this connection's only),
- sends under SLOW_BYTES in SLOW_S seconds (a byte at a time never trips the stall timeout),
- announces or sends more than the file may have (`limit`: the disk is not filled),
- or the file's digest differs from the published one.
The loop runs on any thread: no signal timers, no process-wide socket timeout, no patched torch.hub.
"""
from __future__ import annotations

import glob
import hashlib
import http.client
import os
import re
import time
import urllib.error
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable
from urllib.request import Request, urlopen

from tqdm import tqdm

from resnetlab.files import make_folder, remove_unowned, storage_errors

STALL_TIMEOUT_S = 60.0  # seconds without a byte from the server before a download is given up
SLOW_S, SLOW_BYTES = 120.0, 128 << 10  # a download must grow by SLOW_BYTES in SLOW_S seconds: else too slow
CHUNK = 1 << 20
DIGESTS = {"sha256": "SHA-256", "md5": "MD5"}  # hashlib's name -> the name a message shows
# .<file>.<pid>.<8 hex>.download (and the torch.hub .partial an older resnetlab left beside it)
STAGING = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.download(\.[0-9a-f]+\.partial)?")
now = time.monotonic  # the clock of the slow check (tests set their own)


class DownloadFailed(Exception):
    """One URL did not give the published file; the message says why (no URL, no advice: the caller's)."""


def download(url: str, dest: Path, limit: int, digest: tuple[str, str] | None = None,
             accept: Callable[[Path], None] | None = None, progress: bool = True) -> None:
    """Fetch `url` to `dest`, which appears (in one rename) only as a file of at most `limit` bytes whose
    `digest` = (hashlib name, expected hex digest or its prefix) matches, and that `accept(staged path)`,
    where given, did not refuse by raising DownloadFailed. A file already at `dest` stays as it was
    unless replaced by a good download. DownloadFailed for what the server did; StorageError
    (files.py) for what the disk did."""
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.download")
    hasher = hashlib.new(digest[0]) if digest else None
    try:
        with _network_errors():  # the stall timeout is this connection's: no process-wide socket default
            response = urlopen(Request(url, headers={"User-Agent": "resnetlab"}), timeout=STALL_TIMEOUT_S)
        with response:
            announced = _announced(response)
            if announced is not None and announced > limit:
                raise DownloadFailed(f"the server announces {announced / 1e6:,.1f} MB, past {_may_have(limit)}")
            with storage_errors(dest), _progress(announced, dest.name, progress) as bar:
                make_folder(dest)
                with open(staging, "xb") as out:
                    for block in _blocks(response, limit):
                        out.write(block)
                        if hasher:
                            hasher.update(block)
                        bar.update(len(block))
                    out.flush()
                    os.fsync(out.fileno())  # the bytes are on disk before the name says they are
        if hasher and not hasher.hexdigest().startswith(digest[1]):
            raise DownloadFailed(f"the file differs from the published one ({DIGESTS.get(digest[0], digest[0])} "
                                 f"{hasher.hexdigest()[:16]}..., expected {digest[1][:16]}...): cut short, or "
                                 "changed on the server")
        if accept:
            accept(staging)
        with storage_errors(dest):
            os.replace(staging, dest)  # same folder: atomic
    finally:  # a cleanup that fails (a folder turned read-only) must not hide why the download failed
        try:
            staging.unlink(missing_ok=True)
        except OSError:
            pass


def _may_have(limit: int) -> str:
    return f"the {limit / 1e6:,.1f} MB the file may have: not the published file, or a server that sends without end"


@contextmanager
def _network_errors():
    """Turn what urllib and the socket raise into a DownloadFailed that says it in one line."""
    try:
        yield
    except urllib.error.HTTPError as err:  # a redirect loop's reason spans lines
        raise DownloadFailed(f"HTTP {err.code} {' '.join(str(err.reason).split())}") from None
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, resets, timeouts, bad URLs
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, TimeoutError):
            raise DownloadFailed(f"no data from the server for {STALL_TIMEOUT_S:g} s") from None
        raise DownloadFailed(" ".join(str(reason).split()) or type(err).__name__) from None


def _announced(response) -> int | None:
    """The response's Content-Length, where it gives one."""
    value = str(response.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _blocks(response, limit: int):
    """The response's bytes as they come (a drip is seen a byte at a time), never more than one byte
    past `limit` (the one that shows the server went past it)."""
    read = getattr(response, "read1", None) or response.read
    got, mark = 0, (now(), 0)  # bytes so far; when (and at how many bytes) the download last grew by SLOW_BYTES
    while True:
        with _network_errors():
            block = read(min(CHUNK, limit + 1 - got))
        if not block:
            return
        got += len(block)
        if got > limit:
            raise DownloadFailed(f"it went on, past {_may_have(limit)}")
        if got - mark[1] >= SLOW_BYTES:
            mark = (now(), got)
        elif now() - mark[0] > SLOW_S:
            raise DownloadFailed(f"no {SLOW_BYTES >> 10} kB from the server in {SLOW_S:g} s: too slow, or stalled "
                                 "a byte at a time")
        yield block


def _progress(total: int | None, name: str, shown: bool) -> tqdm:
    """A progress bar on stderr, where it is a terminal (disable=None) and the caller wants one."""
    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {name}",
                disable=None if shown else True, leave=False)


def failure_message(name: str, failures: list[str], kept: str, url: str, dest: Path) -> str:
    """The one line a failed download ends in: each URL's reason, what was kept, what to do."""
    return (f"could not download {name} ({'; '.join(failures)}). {kept}. Without network access, fetch {url} "
            f"elsewhere and put it at {dest}")


def remove_stale_downloads(dest: Path) -> list[Path]:
    """Delete the staging files of `dest`'s downloads whose process is gone (killed by SIGTERM or
    SIGKILL mid-download, where no cleanup ran); a live download's files are left alone. The folder
    may be shared by other containers or machines, where a pid that runs nowhere here is alive: only
    files no download has written to for twice the stall timeout go (a download that stalls that long
    has given up). One that cannot be removed (another user's) is left."""
    dest = Path(dest)
    candidates = dest.parent.glob(f".{glob.escape(dest.name)}.*.download*")
    found = ((stale, STAGING.fullmatch(stale.name)) for stale in candidates)
    return remove_unowned([(stale, int(match["pid"])) for stale, match in found
                           if match and match["name"] == dest.name], 2 * STALL_TIMEOUT_S)


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file already on disk (hashlib's name: "sha256", "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
