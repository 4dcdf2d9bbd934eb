"""Run directories -> a report folder: report.md (tables, figure links) and PNG figures.

Used by `resnetlab report RUN_DIR...` and at the end of `resnetlab experiment`; the figures a
report draws depend on what the runs are (plain and residual twins get the Fig. 6 layout,
ResNets of several depths the Table 6 form) and on the analyses asked for.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from resnetlab.errors import UserError
from resnetlab.files import StorageError, check_writable, process_alive, storage_error, storage_errors, write_text_atomic

from . import plots, progress, table6, tables

ANALYSES = ("responses", "gradients")
# Every file a report writes besides its manifest: the only ones it ever replaces or removes in its
# folder (an experiment's --out also holds the runs, and maybe the user's own notes).
OWN_FILES = ("report.md", "metrics.csv", "curves.png", "degradation.png", "final_vs_depth.png", "layer_responses.png",
             "gradient_flow.png")
STAGING = re.compile(r"\.report\.(?P<pid>\d+)\.tmp")  # the hidden folder a report is drawn in, then moved out of


def _kinds(groups) -> tuple[bool, bool]:
    residual = [_residual(m) for m in groups.values()]
    return any(not r for r in residual), any(residual)


def write_report(run_dirs, out, *, title: str = "Results", analyses=(), data: str | None = None,
                 command: str | None = None, notes: str = "", missing=()) -> list[Path]:
    """Write out/report.md, out/*.png, out/metrics.csv and out/report.json for the runs; returns the
    written paths (report.md first). `missing`: folder names of planned runs never started, listed.

    The report replaces the previous one as a set: every file is drawn in a hidden folder inside
    `out`, then renamed over its old copy (report.md last), and a file of the previous report that
    this one does not make is removed; nothing else in `out` is touched. A write that fails (a full
    disk: one StorageError line naming the file) or a stop keeps the previous report as it was, and
    `out` is taken back when this call made it; a kill leaves the hidden folder, which the next
    report removes."""
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise UserError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}")
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = tables.distinct_runs([tables.load_run(d) for d in run_dirs])
    groups = tables.group_runs(runs)
    out = Path(out)
    check_writable(out / "report.md")  # a read-only folder is said now, before the analyses' minutes
    made = not out.exists()
    _remove_stale_staging(out)  # also this pid's leftover from an earlier process (pids repeat in containers)
    staging = out / f".report.{os.getpid()}.tmp"
    try:
        with _named(out / "report.md"):
            staging.mkdir(parents=True)
        figures = _figures(groups, runs, staging, out, analyses, data)
        files = ["report.md", *(path.name for _, path in figures), "metrics.csv"]
        texts = {"report.md": _markdown(title, groups, figures, command, notes, _depth_form(groups), missing),
                 "metrics.csv": _all_metrics(runs),
                 MANIFEST: json.dumps({"runs": _identities(run_dirs), "files": files}, indent=1)}
        for name, text in texts.items():
            with _named(out / name):
                write_text_atomic(staging / name, text)
        _swap_in(staging, out, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return [out / name for name in files]


@contextmanager
def _named(path: Path):
    """A StorageError about a file in the hidden folder, said of `path`, the file it stands for."""
    try:
        yield
    except StorageError as err:
        if getattr(err, "reason", None) is None:
            raise
        raise storage_error(path, err.reason, path.exists()) from None


def _swap_in(staging: Path, out: Path, files: list[str]) -> None:
    """Rename the new report's files from `staging` into `out` (renames in one folder: each a single
    step, no space needed); figures and metrics.csv first, report.json and report.md last, so that
    report.md is never newer than the files it shows. Files of the previous report this one does not
    make are removed before its manifest, which names them, is replaced."""
    def move(name):
        with storage_errors(out / name):
            os.replace(staging / name, out / name)

    stale = set(_reported_files(out)) & set(OWN_FILES) - set(files)
    for name in files[1:]:
        move(name)
    for name in sorted(stale):
        (out / name).unlink(missing_ok=True)
    move(MANIFEST)
    move(files[0])


def _remove_stale_staging(folder: Path) -> None:
    """Take away the hidden folders of reports killed while drawing (their process is gone)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = STAGING.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink():
            pid = int(match["pid"])
            if pid == os.getpid() or not process_alive(pid):
                shutil.rmtree(path, ignore_errors=True)


def _figures(groups, runs, folder: Path, out: Path, analyses, data) -> list[tuple[str, Path]]:
    """(caption, path) of each figure the runs call for, drawn into `folder` (a failed write is said
    of its name in `out`)."""
    has_plain, has_residual = _kinds(groups)
    plain = {label for label, members in groups.items() if not _residual(members)}
    figures: list[tuple[str, Path]] = []

    def add(caption, name, draw):
        with _named(out / name):
            figures.append((caption, draw(folder / name)))

    if any(r.metrics for r in runs):
        add("Error (training dashed, validation solid), training loss and learning rate", "curves.png",
            lambda path: plots.plot_curves(groups, path))
    if has_plain and has_residual and any(r.metrics for r in runs):
        add("Plain (left) vs residual (right), as the paper's Fig. 6", "degradation.png",
            lambda path: plots.plot_degradation(groups, path))
        add("Final training error against depth", "final_vs_depth.png", lambda path: plots.plot_final_vs_depth(groups, path))
    if "responses" in analyses:
        responses = {label: tables.aggregate_lists([_responses(r, data) for r in members])
                     for label, members in _trained(groups).items()}
        add("Layer responses (Fig. 7)", "layer_responses.png",
            lambda path: plots.plot_layer_responses(responses, path, plain))
    if "gradients" in analyses:
        norms = {label: _gradients(members[0], data) for label, members in _trained(groups).items()}
        add("Per-layer gradient norms (first seed of each config)", "gradient_flow.png",
            lambda path: plots.plot_gradient_flow(norms, path, plain))
    return figures


def _depth_form(groups) -> bool:
    """Table 6's form: ResNets only (no plain twins), some of them the paper's CIFAR-10 nets, finished."""
    return not _kinds(groups)[0] and any(table6.is_paper_cifar10(m) and progress.finished(m[0]) for m in groups.values())


def _residual(members) -> bool:
    from resnetlab.models import model_info

    return model_info(members[0].model).residual


def _all_metrics(runs) -> str:
    """Every run's metrics.jsonl in one CSV, its first column the run's folder name."""
    from resnetlab.engine.metrics_csv import metrics_csv

    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.resolve().parent.name}/{r.path.name}" for r in runs]
    return metrics_csv([{"run": name, **m.to_dict()} for name, run in zip(names, runs) for m in run.metrics], first=("run",))


# ---------------------------------------------------------------- where a report goes

MANIFEST = "report.json"  # in every report folder: the runs it reports on, so it is never taken for another's


def _identities(run_dirs) -> list[str]:
    return sorted({str(Path(d).resolve()) for d in run_dirs})


def _reported_runs(folder: Path) -> list[str] | None:
    """The runs of the report in `folder` by its manifest; None when there is no readable one."""
    try:
        return json.loads((folder / MANIFEST).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reported_files(folder: Path) -> list[str]:
    """The files of the report in `folder` by its manifest; none when there is no readable one."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in files if isinstance(name, str)] if isinstance(files, list) else []


def _usable(folder: Path, run_dirs) -> bool:
    """A folder a report of these runs may be written into: new, empty, or a report of the same runs."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    _remove_stale_staging(folder)  # a killed report's hidden folder does not make it another's
    return not any(folder.iterdir()) or _reported_runs(folder) == _identities(run_dirs)


def report_dir(run_dirs, out=None) -> Path:
    """Where `resnetlab report` writes. Without `out`, a folder of its own: RUN/report/ for one run,
    report/ beside several runs (in their common parent); when that holds another report (or
    anything else), the first free report-2/, report-3/ ... A report of the same runs is refreshed
    in place. An explicit `out` whose manifest names other runs is refused, and so is one that holds
    other files and no report (a run's own folder: its metrics.csv would be replaced; the user's
    report.md)."""
    if out is not None:
        out = Path(out)
        _remove_stale_staging(out)  # a killed report's hidden folder is not "other files"
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder")
        held = _reported_runs(out)
        if held not in (None, _identities(run_dirs)):
            raise UserError(f"--out {out} holds a report of other runs; choose another folder, or leave --out "
                            "out to get a new one")
        from resnetlab.engine.rundir import refuse_other_files

        refuse_other_files(out, sorted(p.name for p in out.iterdir()) if held is None and out.is_dir() else [], "report",
                           "give a new or empty folder, or leave --out out to get one")
        return out
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) == 1:
        base = dirs[0] / "report"
    else:
        try:
            base = Path(os.path.commonpath([str(d.parent) for d in dirs])) / "report"
        except ValueError:  # absolute and relative paths mixed
            base = Path(os.path.commonpath([str(d.resolve().parent) for d in dirs])) / "report"
    candidate, n = base, 1
    while not _usable(candidate, run_dirs):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _trained(groups):
    """Groups with at least one finished run, keeping only their finished runs."""
    done = {label: [r for r in members if r.summary is not None] for label, members in groups.items()}
    done = {label: members for label, members in done.items() if members}
    if not done:
        raise UserError("the analyses need finished runs (summary.json and checkpoints/last.pt); none is finished")
    return done


def _responses(run, data):
    from .analysis import run_layer_responses

    return run_layer_responses(run.path, data)


def _gradients(run, data):
    from .analysis import run_gradient_norms

    return run_gradient_norms(run.path, data)


def _setup(groups) -> str:
    """One line with the training setup of the first run (the schedule is what a reader asks first)."""
    first = next(iter(groups.values()))[0]
    cfg, sch, opt = first.config, first.config["schedule"], first.config["optim"]
    length = f"{sch['epochs']} epochs" if sch.get("epochs") else f"{sch['max_steps']} iterations"
    drops = f", lr x{sch['gamma']} at {sch['milestones_unit']} {sch['milestones']}" if sch["kind"] == "step" else ""
    subset = cfg["data"].get("train_size")
    subset = f", training on a class-balanced subset of {subset} images" if subset else ""
    precision = cfg["train"]["precision"]  # "auto" is resolved where it trains (engine/runtime.py)
    resolved = ((first.summary.runtime or {}).get("precision") if first.summary else None)  # summaries since 2026-12-06
    precision += ("" if precision != "auto" else f" ({resolved} on the machine that trained it)" if resolved
                  else " (bf16 where the training device has fast bf16, else fp32)")
    return (f"Setup (first run): {cfg['data']['dataset']} data at `{cfg['data']['root']}` (val_size "
            f"{cfg['data']['val_size']}{subset}), {sch['kind']} schedule of {length}, lr {opt['lr']}{drops}, batch "
            f"{opt['batch_size']}, weight decay {opt['weight_decay']}, precision {precision}.")


def _markdown(title, groups, figures, command, notes, depth_form: bool, missing=()) -> str:
    lines = [f"# {title}", ""]
    if command:
        lines += ["Made with:", "", "```", command, "```", ""]
    if notes:
        lines += [notes, ""]
    lines += [_setup(groups), ""]
    lines += ["Errors in %. `train err` is the training error averaged over the last evaluation interval "
              "(training mode, augmented batches, as the paper's dashed curves) and `train loss` the mean "
              "cross-entropy over the same batches; `val` is the held-out part of "
              "the training set; `test` is the test split, evaluated once at the end. Several seeds of one "
              "config: mean ± std (sample std) and best.", "", tables.results_table(groups)]
    unfinished = progress.unfinished_notes(groups, missing)
    if unfinished:
        lines.append(unfinished)
    if depth_form:
        lines += ["In the form of the paper's Table 6 (paper: its full 64k-iteration schedule on CIFAR-10; "
                  "ours: measured on the data and schedule above; params: of each net as built, paper: only for the "
                  "nets it reports, with option A shortcuts):", "", table6.depth_table(groups)]
    for caption, path in figures:
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    lines += ["Every evaluation of every run, one row each: [metrics.csv](metrics.csv).", ""]
    return "\n".join(lines)
