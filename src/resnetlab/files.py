"""Atomic file writes: a reader (or a crash, a full disk, Ctrl-C) never sees half a file.

Everything a run leaves behind (checkpoints, config.yaml, summary.json, the decoded-image caches,
a downloaded archive, benchmark results) goes through `atomic_write`: the bytes go to a
temporary file in the same folder, are flushed to disk, and only then renamed over the target,
which POSIX and Windows both do in one step. On any error the temporary file is removed and an
existing target is left as it was; a process killed mid-write leaves its temporary file, which
`remove_stale_temporaries` takes away on the next start.

`storage_errors(path)` is the one place where a failed write (disk full, read-only, no
permission) becomes a `StorageError`: one line naming the file and saying what was kept.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from resnetlab.errors import UserError

# errno values that mean "the storage refused", as opposed to, say, a network error raised
# while the bytes of a download were being produced inside the `with` block.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                  errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)(?:\.t\d+)?\.tmp")  # .tN: the writing thread (not in older names)


class StorageError(UserError):
    """A file could not be written; the message names it and says whether an older one is intact."""


def storage_error(path: Path, reason: str, existed: bool) -> StorageError:
    kept = f"the previous {path.name} is intact" if existed else "nothing was written there"
    err = StorageError(f"could not write {path} ({reason}); {kept}")
    err.reason = reason  # the storage's own words, for callers that phrase the message themselves
    return err


@contextmanager
def storage_errors(path, existed: bool | None = None):
    """Turn an OSError of the storage inside the block into a StorageError about `path`; also a
    file not found because `path`'s folder is gone (a run directory deleted while it trains)."""
    path = Path(path)
    existed = path.exists() if existed is None else existed
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOENT and not path.parent.is_dir():
            raise storage_error(path, "its folder was removed while it was written to", False) from err
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(path, err.strerror or str(err), existed) from err


def temporary(path: Path) -> Path:
    """The temporary name of an atomic write of `path`: the same folder, so the rename never crosses
    file systems; the pid and the thread keep concurrent writers apart."""
    return path.with_name(f".{path.name}.{os.getpid()}.t{threading.get_native_id()}.tmp")


SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"))


def special_kind(path) -> str | None:
    """"a FIFO", "a socket", "a character device" ... for a path that is neither a regular file nor a
    folder (opening a FIFO waits for a writer for ever; a device has no end), else None (also when it
    cannot be looked at: the open that follows says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "a special file")


def make_folder(path: Path) -> None:
    """The folder `path` goes in, with its parents; a StorageError for any reason it cannot be made
    (even "no such file" under /proc, or a file standing where a folder should be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = _in_the_way(err.filename) if isinstance(err, FileExistsError) else err.strerror
        raise storage_error(path, reason or str(err), path.exists()) from None


def _in_the_way(name) -> str:
    """What stands where a folder should be made."""
    if os.path.islink(name) and not os.path.exists(name):
        return f"{name} is a symbolic link to {os.readlink(name)}, which does not exist"
    return f"{name} is a file, not a folder"


# Opening a run's own file to append to it: never through a symbolic link (ELOOP, a StorageError).
APPEND_OWN = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW


def write_target(path) -> Path:
    """The file that a write of `path` replaces: the target of a symbolic link to a file (the link
    stays a link, as with cp or a shell's >), else `path` itself. For the outputs a user names
    (export, embed --out) only: a run's own files are replaced, never written through a link (a
    run copied with `cp -as` would write into the original)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() and path.is_file() else path


@contextmanager
def atomic_path(path):
    """`with atomic_path(path) as tmp: writer(tmp)`, for writers that want a file name (ONNX,
    TorchScript): `tmp` is renamed over `path` once the block ends, and removed on any error."""
    path = Path(path)
    tmp, existed = temporary(path), path.exists()
    with storage_errors(path, existed):
        make_folder(path)
        tmp.unlink(missing_ok=True)  # this pid's leftover from an earlier process (pids repeat in containers)
        remove_abandoned(path)
        try:
            yield tmp
            keep_mode(path, tmp)
            os.replace(tmp, path)
        except FileNotFoundError as err:
            if str(tmp) not in (err.filename, err.filename2) or not path.parent.is_dir():
                raise  # not the write's own file (a file the writer reads), or its folder gone (storage_errors says)
            # the temporary file taken away under the writer (another container's cleanup of a shared cache)
            raise storage_error(path, "its temporary file was removed while it was written",
                                existed and path.exists()) from err
        finally:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """`with atomic_write(path) as f: f.write(...)`; mode "wb" (default) or "w" (text, UTF-8)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_files_atomic(contents: dict) -> None:
    """Files that belong together ({path: bytes}, e.g. embeddings and their names): every one is
    written to its temporary file before any is renamed into place, so a full disk half-way keeps
    all the earlier files as they were instead of a new one beside an old one that no longer fits it."""
    for path in contents:  # the one reason a rename fails after the writes: found before any is made
        if Path(path).is_dir():
            raise storage_error(Path(path), "Is a directory", False)
    with ExitStack() as pending:  # leaving it renames them, in reverse order; an error removes every one
        for path, data in contents.items():
            with open(pending.enter_context(atomic_path(path)), "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


def check_writable(path) -> None:
    """Raise a StorageError now, before any long work, unless a file can be created at `path`:
    creates and removes a temporary file beside it (and any missing folders above it), so that
    nothing is left behind either way."""
    path = Path(path)
    if path.is_dir():  # a temporary file beside it can be made, but not renamed over it
        raise storage_error(path, "Is a directory", False)
    tmp, created, folder = temporary(path), [], path.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        for new in reversed(created):
            new.mkdir()
        open(tmp, "xb").close()
        tmp.unlink()
    except OSError as err:  # any reason at all (even "no such file" under /proc) means "cannot write there"
        raise storage_error(path, err.strerror or str(err), path.exists()) from None
    finally:
        for new in created:
            if new.is_dir():
                new.rmdir()


def write_text_atomic(path, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def cache_home() -> Path:
    """resnetlab's caches (decoded images, CIFAR's download, compiled models): $RESNETLAB_CACHE, else
    $XDG_CACHE_HOME/resnetlab, else ~/.cache/resnetlab, as the environment says when it is asked."""
    if os.environ.get("RESNETLAB_CACHE"):
        return Path(os.environ["RESNETLAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or home() / ".cache").expanduser() / "resnetlab"


def home() -> Path:
    """The user's home folder, or a UserError saying how to do without one (HOME unset for a user the
    password database does not know: a container run with --user 12345)."""
    try:
        return Path.home()
    except (RuntimeError, KeyError):
        raise UserError(f"there is no home folder to keep resnetlab's caches in (HOME is unset and user {os.getuid()} "
                        "has none in the password database): set RESNETLAB_CACHE (or HOME) to a writable folder") from None


SHARED_IDLE_S = 300.0  # a temporary file in a shared cache untouched this long has no writer left


def remove_stale_temporaries(folder, idle_s: float = 0.0, of: str | None = None) -> list[Path]:
    """Delete the temporary files of atomic writes whose process is gone (killed mid-write);
    returns them. A live writer's file is left alone. In a folder other machines or containers may
    write too (a cache on a shared home, a volume mounted in several containers), a pid that runs
    nowhere here may be a live writer there: pass idle_s, and only files not written to for that
    long go (a writer keeps its file's mtime fresh). A run directory, locked by its one trainer, needs none.
    A file that cannot be removed (another user's, in a shared folder) is left where it is. `of`: only
    those of writes of the file of that name (also a temporary's own: an export's staged file)."""
    written_for = lambda name: written_for(m["name"]) if (m := TEMPORARY.fullmatch(name)) else name  # noqa: E731
    found = ((path, TEMPORARY.fullmatch(path.name)) for path in sorted(Path(folder).glob(".*.tmp")))
    return remove_unowned([(path, int(match["pid"])) for path, match in found if match and path.is_file()
                           and (of is None or written_for(match["name"]) == of)], idle_s)


def keep_mode(path: Path, tmp: Path) -> None:
    """The permissions of the file a write replaces, on its replacement (a `chmod 600` model file came
    back world-readable after an export over it)."""
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    except OSError:  # nothing there before (the mode the umask gives stays), or not ours to change
        pass


def remove_abandoned(path: Path) -> None:
    """The temporary files of earlier writes of `path` whose process was killed (kill -9, out of memory)
    and that no one wrote to for SHARED_IDLE_S: each as big as the file (an export of ResNet-152:
    240 MB), they stayed in a user's folder for good."""
    try:
        remove_stale_temporaries(path.parent, SHARED_IDLE_S, of=path.name)
    except OSError:
        pass


def remove_unowned(files: list[tuple[Path, int]], idle_s: float) -> list[Path]:
    """Remove each (file, pid of its writer) whose writer runs nowhere here and that was not written to
    for idle_s seconds; returns them. One that cannot be removed (another user's) is left."""
    removed, now = [], time.time()
    for path, pid in files:
        if not _alive(pid) and idle_for(path, now) >= idle_s:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue
            removed.append(path)
    return removed


def idle_for(path: Path, now: float) -> float:
    """Seconds since `path` was last written (infinite when it is gone already)."""
    try:
        return now - path.stat().st_mtime
    except OSError:
        return float("inf")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing yet when it cleans up: the file is an earlier run's
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (anyone's): the writer of a temporary file named by it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every OS, and harmless to skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
