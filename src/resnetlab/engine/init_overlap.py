"""A run started from another run's weights (--init RUN) on the folder RUN trained on.

The hold-out of a folder without val/ is drawn over the folder as it is: after images were added
or removed (the case where --resume is refused and `--init RUN --out NEW_RUN` is the advice), the
new run holds out images RUN did not hold out, so RUN may have trained on them, and the new run's
validation error (and the best.pt chosen on it) is optimistic. RUN/data.json lists the images RUN
held out; the new run's data record lists its own.
"""
from __future__ import annotations

import os
from pathlib import Path

from resnetlab.errors import count, option


def init_run(init) -> Path | None:
    """The run directory finetune.init names: itself, or the run of a checkpoint inside one
    (RUN/checkpoints/NAME.pt); None for weights kept elsewhere or published by name."""
    from .checkpoint import run_dir_of

    if not isinstance(init, (str, os.PathLike)) or not str(init).strip():
        return None
    path = Path(init).expanduser()
    try:
        if path.is_dir():
            return path if (path / "data.json").is_file() else None
        return run_dir_of(path) if path.is_file() else None
    except OSError:
        return None


def held_out_files(run: Path) -> tuple[str, list[str], str | None, list] | None:
    """(root, files held out of train, layout, classes) as RUN/data.json lists them; None when it lists none
    (a val/ folder, no hold-out, CIFAR's indices), or is missing, unreadable or not a data record."""
    from .evaluate import recorded_validation

    recorded = recorded_validation(run)
    if recorded is None:
        return None
    held, saved = recorded
    files, root, layout = held.get("files"), saved.get("root"), saved.get("layout")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not isinstance(root, str):
        return None
    return root, files, layout if isinstance(layout, str) else None, saved.get("classes")


def same_data(saved: tuple, root: str | None, classes: list[str]) -> bool:
    """Whether RUN's record is of the data at `root`: the same folder, or a copy of it (the same
    classes, and at least half of the files RUN held out there under the same names)."""
    try:
        if root is None or os.path.realpath(saved[0]) == os.path.realpath(root):
            return root is not None
        found = sum(os.path.isfile(os.path.join(root, f)) for f in saved[1])
    except (OSError, ValueError):
        return False
    return saved[3] == classes and 2 * found >= len(saved[1]) > 0


def init_holdout_warning(init, bundle) -> str | None:
    """The warning for a run whose --init RUN held out, on the same data folder, other images than
    this run holds out (so this run validates on images RUN may have trained on); None otherwise."""
    now = bundle.provenance.get("validation") or {}
    if now.get("from") != "held out of train" or not now.get("files"):
        return None
    run = init_run(init)
    saved = held_out_files(run) if run is not None else None
    root = bundle.provenance.get("root")
    if saved is None or not same_data(saved, root, bundle.classes):
        return None
    old = set(saved[1])
    new = [f for f in now["files"] if f not in old]
    if not new:
        return None
    where = (f"into {root}/val/<class>/" if saved[2] == "splits" else
             f"into {root}/val/<class>/ and the class folders into {root}/train/")
    return (f"{option('--init ', 'finetune.init=')}{init}: {count(len(new), 'image')} of the {len(now['files'])} this "
            f"run holds out for validation (e.g. {new[0]}) {'were' if len(new) != 1 else 'was'} not held out by {run}, "
            f"which may have trained on {'them' if len(new) != 1 else 'it'}: the hold-out is drawn again over the "
            "folder as it is now, so this run's validation error is optimistic, and best.pt is chosen on it. Put the "
            f"images {run / 'data.json'} lists as held out {where} (a val/ folder is used as it is), so both runs "
            "validate on images neither trained on")
