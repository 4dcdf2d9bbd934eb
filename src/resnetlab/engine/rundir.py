"""The run directory: one training at a time in it, and a consistent state after any crash.

- `RunDirLock`: an exclusive `flock` on RUN/.lock, held for the whole run. The kernel drops it
  when the process ends in any way (kill -9 included), so there is never a stale lock to remove
  by hand; a second training on the same directory is refused with the holder's pid, host and
  start time. Under torchrun rank 0 holds it and tells the other ranks the outcome.
- `tidy_for_start`: what a killed run can leave behind is put right before the next one starts:
  temporary files of writes cut short are removed, metrics.jsonl keeps exactly the evaluations
  up to the checkpoint it continues from (the later ones will run again), and a best.pt that
  the kill kept from being written is restored from last.pt.

Evaluations write in the order metrics line -> last.pt -> best.pt (engine/train.py), which is
what makes those repairs exact.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from resnetlab.config import Config, load_config
from resnetlab.errors import UserError, option
from resnetlab.files import TEMPORARY, make_folder, remove_stale_temporaries, storage_errors, write_text_atomic

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistInfo, broadcast_object
from .records import Checkpoint
from .run_records import MetricsRow
from .state import new_run_from, resuming

LOCK_NAME = ".lock"
_held_fds: set[int] = set()  # lock files this process holds, closed in forked children
_fork_hook_installed = False


class RunDirLock:
    """`with RunDirLock(workdir, dist_info) as lock:` ... `lock.acquire()` once the directory may be made.

    Entering takes the lock at once when the directory already exists (so a second training is
    refused before it spends minutes building data); otherwise `acquire()` takes it later, after
    the config checks that must leave no directory behind. Both are collective under torchrun.
    """

    def __init__(self, workdir: Path, dist_info: DistInfo = DistInfo()):
        self.workdir, self.dist_info = Path(workdir), dist_info
        self.fd: int | None = None  # rank 0's descriptor of the lock file
        self.held = False
        self.made: list[Path] = []  # the lock file and folders it made, removed again when no run was written

    def __enter__(self) -> "RunDirLock":
        refuse_a_file(self.workdir)
        if broadcast_object(self.workdir.is_dir(), self.dist_info):  # rank 0's view, so every rank takes the same path
            self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def acquire(self) -> None:
        if self.held:
            return
        refusal = None
        if self.dist_info.is_main:
            try:
                self.made = [p for p in (self.workdir / LOCK_NAME, self.workdir) if not p.exists()]
                self.fd = _lock(self.workdir)
            except UserError as err:  # refused, or the directory cannot be written
                refusal = str(err)
        refusal = broadcast_object(refusal, self.dist_info)
        if refusal is not None:
            raise UserError(refusal)
        self.held = True

    def keep(self) -> None:
        """The run is accepted and writes its files: the lock file stays with them."""
        self.made = []

    def release(self) -> None:
        if self.fd is not None:
            for path in self.made:  # the run was refused before it was written: leave no trace of it
                try:
                    path.unlink() if path.name == LOCK_NAME else path.rmdir()
                except OSError:
                    pass  # a folder something else was written into is kept
            _held_fds.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd, self.held, self.made = None, False, []


def _lock(workdir: Path) -> int:
    path = workdir / LOCK_NAME
    make_folder(path)  # one line even where mkdir says "no such file" (under /proc) or a file is in the way
    if path.is_symlink():  # never ours: its target (another run's lock, a user's file) would be truncated
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}), not this run's own lock file; "
                        f"remove the link (a run copied with cp -s?), then start again")
    with storage_errors(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f"{workdir} is in use by another training ({holder}); wait for it to end, "
                        f"or choose another {option('--out', 'workdir')}") from None
    _install_fork_hook()
    _held_fds.add(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": local_time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except OSError:
        pass  # who holds the lock is a courtesy to the next one; a full disk is reported by the first real write
    return fd


def training_in(workdir: Path) -> str | None:
    """Who holds `workdir`'s lock (a training running there), or None; takes no lock itself."""
    try:
        fd = os.open(Path(workdir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # and with it the shared lock just taken


def local_time() -> str:
    """Now, in the local time zone when it can be had: TZ=UTC+24 (valid POSIX, an offset datetime
    refuses) raised ValueError out of every training's start."""
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        return now.astimezone().isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return now.isoformat(timespec="seconds")


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


def _install_fork_hook() -> None:
    """A forked child (a data-loading worker) inherits the lock's descriptor, and a flock lasts as
    long as any descriptor does: the child closes its copies, so the lock dies with the trainer."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_close_held_in_child)
        _fork_hook_installed = True


def _close_held_in_child() -> None:
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


def resume_point(workdir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from, or None to start at step 0.

    A run directory with config.yaml but no last.pt was stopped before its first checkpoint was
    complete: nothing was kept, so resuming it is starting it again (same config, same seed,
    hence the same run). A step-0 checkpoint would not help: a kill while writing it leaves the
    same directory.
    """
    last, asked = workdir / "checkpoints" / "last.pt", resuming(workdir)
    if resume and not last.is_file() and not (workdir / "config.yaml").is_file():
        raise UserError(f"{asked}: no run there to continue (no config.yaml, no checkpoints/last.pt)")
    if resume and not last.is_file() and (workdir / "checkpoints" / "best.pt").is_file():
        raise UserError(f"{asked}: checkpoints/last.pt is missing but best.pt is there, so the run got past "
                        "its first checkpoint; starting it again would replace best.pt and its metrics. Put last.pt "
                        f"back, or start a new run from its weights ({new_run_from(workdir)})")
    if not resume and last.exists():
        raise UserError(f"{workdir} already holds a run (checkpoints/last.pt); continue it with " + option(
            f"--resume {workdir} or choose another --out", "resume=True or choose another workdir"))
    if not resume:
        refuse_others_files(workdir)
    return last if resume and last.is_file() else None


def refuse_others_files(workdir: Path) -> None:
    """A new run goes in a new folder, an empty one, or one where a run was started and stopped before
    its first checkpoint. A folder of anything else (`--out .`, a project folder, the data itself) is
    refused before a byte is written: the run's config.yaml, summary.json and eval/ would replace
    files of the same names there, and its checkpoints would sit among the user's own files."""
    if not workdir.is_dir():
        return
    names = sorted(name for name in os.listdir(workdir)
                   if name not in (LOCK_NAME, "auto_recipe.json") and not TEMPORARY.fullmatch(name))
    if not names or _a_run_was_started(workdir):
        return
    refuse_other_files(workdir, names, "run")


def refuse_other_files(folder: Path, names: list[str], what: str, instead: str = "give a new or empty folder") -> None:
    """The one line for an --out that holds `names` (files that are not `what`'s): the first three, folders marked."""
    if names:
        shown = ", ".join(f"{n}/" if (folder / n).is_dir() else n for n in names[:3]) + (" ..." if len(names) > 3 else "")
        out = option(f"--out {folder}", str(folder))
        raise UserError(f"{out} already holds other files ({shown}) and no {what}; {instead}")


def _a_run_was_started(workdir: Path) -> bool:
    """config.yaml there is one a training wrote (a run stopped before its first checkpoint, which
    starts again), not a file of the user's that happens to have the name."""
    try:
        return saved_config(workdir) is not None
    except UserError:
        return False


def refuse_out_in_data(workdir, data_root, dataset: str = "folder") -> None:
    """--out inside the data folder: a later survey of the data would read the run folder as a class
    (or its images as images of one). Refused for a new run before anything is written."""
    if dataset == "synthetic" or data_root is None or not Path(data_root).expanduser().is_dir():
        return
    out, data = Path(workdir).expanduser().resolve(), Path(data_root).expanduser().resolve()
    if out == data or data in out.parents:
        where = "is the data folder" if out == data else f"is inside the data folder {data_root}"
        raise UserError(f"{option('--out', 'workdir')} {workdir} {where}; the run's files would be read as data next "
                        "time: put the run outside it")


def tidy_for_start(workdir: Path, step: int, last_ckpt: Checkpoint | None) -> list[str]:
    """Repair what a killed run left (rank 0, under the lock); returns what was done, for the log."""
    done = [f"removed {p.name}, left by a write that was cut short"
            for folder in (workdir, workdir / "checkpoints") for p in remove_stale_temporaries(folder)]
    dropped = trim_metrics(workdir / "metrics.jsonl", step)
    if dropped:
        done.append(f"metrics.jsonl: dropped {dropped} line(s) after step {step} (they will be recorded again)")
    if last_ckpt is not None and restore_best(workdir / "checkpoints", last_ckpt):
        done.append(f"checkpoints/best.pt restored from last.pt (step {step})")
    return done


def trim_metrics(path: Path, step: int) -> int:
    """Keep the evaluations up to `step` (and no half-written last line); returns lines dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if _step_of_line(line) is not None and _step_of_line(line) <= step]
    if len(kept) == len(lines):
        return 0
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _step_of_line(line: str) -> int | None:
    try:
        return MetricsRow.from_dict(json.loads(line)).step
    except ValueError:  # not JSON, or not a row (UserError is a ValueError)
        return None


def restore_best(ckpts: Path, last: Checkpoint) -> bool:
    """When last.pt records that its own step is the best one but best.pt does not hold it (a kill
    between the two writes), write best.pt from last.pt: the same checkpoint the run would have written."""
    training = last.training
    if training is None or training.loop.best_step != training.step:
        return False
    best = ckpts / "best.pt"
    try:
        held = load_checkpoint(best).training if best.is_file() else None
        if held is not None and held.step == training.step:
            return False
    except UserError:
        pass  # unreadable or damaged: replaced below
    save_checkpoint(last, best)
    return True


def saved_config(workdir: Path) -> Config | None:
    """The config a run directory was started with, or None when it holds no run yet."""
    path = Path(workdir) / "config.yaml"
    return load_config(str(path)) if path.is_file() else None


def refuse_a_file(workdir) -> None:
    """--out must be a run directory (or not exist yet), not a file."""
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise UserError(f"{workdir} is a file, not a run directory; choose another {option('--out', 'workdir')}")
