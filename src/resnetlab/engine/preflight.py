"""What a run says before its first step, beyond the model line: the data's images per class, the
files it ignored, what was held out for validation (also written to RUN/data.json), and warnings
for choices that work but cost the user (imbalanced classes left as they are, a warm-up or lr
milestones the run never reaches, a run that never trains at full size, more decoding workers than
CPU cores, an --init run that may have trained on images this run validates on)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from resnetlab.cpu import usable_cores
from resnetlab.data.folder import SPLITS
from resnetlab.errors import ResnetlabWarning, UserError, count
from resnetlab.files import write_text_atomic

from .finetune import without_init_warning
from .init_overlap import init_holdout_warning
from .schedules import schedule_warnings
from .state import new_run_from, resuming


def preflight(run) -> None:
    """Log and warn on rank 0; write RUN/data.json there."""
    from resnetlab.data.datasets import FileDataset
    from resnetlab.data.loaders import epoch_image_size
    from resnetlab.data.summary import data_record, imbalance_warning, notes

    if run.state.step > 0:  # resumed: the files the run met unreadable while decoding stay on its record (every rank)
        carry_decoding_skips(run.workdir, file_splits(run.bundle), run.bundle.provenance.get("root"))
    if not run.dist_info.is_main:
        return
    cfg = run.cfg
    for line in notes(run.bundle, cfg.data.balance):
        run.log.info(line)
    scales, full = cfg.data.progressive_scales, cfg.data.image_size
    if scales:
        sides = [epoch_image_size(cfg.data, e) for e in range(len(scales))]
        run.log.info(f"progressive resizing: training crops of {', '.join(map(str, sides))} px in epochs 1-{len(sides)}, "
                     f"then {full}; validation (at {full}) only once the steps since the last one were all at {full}")
    if cfg.train.test_protocol != "center" and run.bundle.test is not None:
        run.log.info(f"final test with {cfg.train.test_protocol} views (validation: centre views)")
    write_text_atomic(run.workdir / "data.json", json.dumps(data_record(run.bundle), indent=1))
    run.recorded_skips = sum(len(d.unreadable) for d in file_splits(run.bundle))
    found = [without_init_warning(cfg.finetune), init_holdout_warning(cfg.finetune.init, run.bundle),
             imbalance_warning(run.bundle, cfg.data.balance)] + schedule_warnings(cfg.schedule, run.steps_per_epoch)
    epochs = -(-run.total // run.steps_per_epoch)
    if len(scales) >= epochs and epoch_image_size(cfg.data, epochs - 1) != full:
        found.append(f"data.progressive_scales lists {count(len(scales), 'epoch')} and the run has {count(epochs, 'epoch')}: it never trains at "
                     f"data.image_size={full}, the size it is evaluated at; shorten the list")
    # more would only take turns (the batches are the same either way); in-memory arrays start none
    if isinstance(run.bundle.train, FileDataset) and cfg.train.workers > usable_cores():
        run.log.info(f"train.workers={cfg.train.workers}: {usable_cores()} decoding processes, one per CPU core")
    for message in filter(None, found):
        warnings.warn(message, ResnetlabWarning, stacklevel=2)


def file_splits(bundle) -> list:
    from resnetlab.data.datasets import FileDataset

    return [d for d in (bundle.train, bundle.val, bundle.test) if isinstance(d, FileDataset)]


def carry_decoding_skips(workdir, splits: list, root: str | None) -> None:
    """Files RUN/data.json lists as skipped that the data as read now did not find unreadable (met
    while decoding, before a resume) are taken as met and warned about again, each into the split it
    belongs to; under the data's root now (`--resume RUN --data NEW_DIR`), where the record had another."""
    try:
        record = json.loads((Path(workdir) / "data.json").read_text(encoding="utf-8"))
        saved, was = record.get("skipped_files") or [], record.get("root")
    except (OSError, ValueError, AttributeError):
        return
    moved = lambda path: os.path.join(root, os.path.relpath(path, was)) if root and was else path  # noqa: E731
    listed = {moved(s["path"]): s["reason"] for s in saved
              if isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str)}
    for split in splits:
        found = {path: listed[path] for path in split.paths if path in listed}
        split.unreadable.update(found)
        split.reported_bad.update(found)


def record_decoding_skips(run) -> None:
    """Add the files met unreadable while decoding (data.skip_bad), on any process, to RUN/data.json.
    Every process calls it at the same points (checkpoints, the end of the run): it gathers."""
    from resnetlab.data.summary import data_record

    from .distributed import gather_objects

    splits = file_splits(run.bundle)
    if not (splits and run.cfg.data.skip_bad):  # alike on every process: none of them gathers
        return
    for theirs in gather_objects([d.unreadable for d in splits], run.dist_info):
        for split, bad in zip(splits, theirs):
            split.unreadable.update((p, r) for p, r in bad.items() if p not in split.unreadable)
    found = sum(len(d.unreadable) for d in splits)
    if run.dist_info.is_main and found != run.recorded_skips:
        write_text_atomic(run.workdir / "data.json", json.dumps(data_record(run.bundle), indent=1))
        run.recorded_skips = found


def data_changes(workdir, bundle, splits: tuple = SPLITS) -> list[str]:
    """How the data as built now differs, in `splits`, from the record the run wrote to RUN/data.json
    (data.summary.record_changes); [] when there is none (runs from before data.json) or it is unreadable."""
    from resnetlab.data.summary import data_record, record_changes

    try:
        saved = json.loads((Path(workdir) / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return record_changes(saved, json.loads(json.dumps(data_record(bundle))), splits)  # as it would be written


def data_source(bundle) -> str:
    root = bundle.provenance.get("root")
    return f"the data at {root}" if root else "the data"


def check_resumed_data(workdir, bundle) -> None:
    """--resume continues only on the data the run trained on: its labels, steps per epoch and
    validation hold-out all follow from it. Every rank builds the same data and reads the same
    file, so every rank decides alike."""
    changes = data_changes(workdir, bundle)
    if changes:
        raise UserError(f"{resuming(workdir)}: {data_source(bundle)} is not what the run trained on "
                        f"({'; '.join(changes)}), so the run would not continue exactly (labels and the validation "
                        f"hold-out follow from the data); put the data back as it was, or start a new run from its "
                        f"weights ({new_run_from(workdir)})")
