"""Run directories -> a report folder: report.md (tables, figure links) and PNG figures.

Used by `resnetlab report RUN_DIR...` and at the end of `resnetlab experiment`; the figures a
report draws depend on what the runs are (plain and residual twins get the Fig. 6 layout,
ResNets of several depths the Table 6 form) and on the analyses asked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from resnetlab.errors import UserError
from resnetlab.files import check_writable, write_text_atomic

from . import plots, tables

ANALYSES = ("responses", "gradients")


def _kinds(groups) -> tuple[bool, bool]:
    residual = [_residual(m) for m in groups.values()]
    return any(not r for r in residual), any(residual)


def write_report(run_dirs, out, *, title: str = "Results", analyses=(), data: str | None = None,
                 command: str | None = None, notes: str = "") -> list[Path]:
    """Write out/report.md and out/*.png for the runs; returns the written paths (report.md first).

    A report is whole or absent: when a write fails (a full disk, a read-only folder: one
    StorageError line) or the user stops it, the files it added are taken back, and `out` with
    them when this call made it; each file is written atomically, so none is left half written."""
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise UserError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}")
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = tables.distinct_runs([tables.load_run(d) for d in run_dirs])
    groups = tables.group_runs(runs)
    out = Path(out)
    check_writable(out / "report.md")  # a read-only folder is said now, before the analyses' minutes
    before = set(out.iterdir()) if out.is_dir() else None
    written: list[Path] = []
    try:
        figures = _figures(groups, runs, out, analyses, data, written)
        files = ["report.md", *(path.name for _, path in figures), "metrics.csv"]
        texts = {"report.md": _markdown(title, groups, figures, command, notes, depth_form=_depth_form(groups)),
                 "metrics.csv": _all_metrics(runs),
                 MANIFEST: json.dumps({"runs": _identities(run_dirs), "files": files}, indent=1)}
        for name, text in texts.items():
            written.append(write_text_atomic(out / name, text))
    except BaseException:
        _take_back(out, before, written)
        raise
    return [out / name for name in files]


def _take_back(out: Path, before: set | None, written: list[Path]) -> None:
    """Remove the files a failed report added (those it replaced stay replaced), and `out` if it made it."""
    for path in written:
        if before is None or path not in before:
            path.unlink(missing_ok=True)
    if before is None and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _figures(groups, runs, out: Path, analyses, data, written: list) -> list[tuple[str, Path]]:
    """(caption, path) of each figure the runs call for, drawn into `out`; each path is added to
    `written` once it is there."""
    has_plain, has_residual = _kinds(groups)
    plain = {label for label, members in groups.items() if not _residual(members)}
    figures: list[tuple[str, Path]] = []

    def add(caption, path):
        written.append(path)
        figures.append((caption, path))

    if any(r.metrics for r in runs):
        add("Error (training dashed, validation solid), training loss and learning rate",
            plots.plot_curves(groups, out / "curves.png"))
    if has_plain and has_residual and any(r.metrics for r in runs):
        add("Plain (left) vs residual (right), as the paper's Fig. 6",
            plots.plot_degradation(groups, out / "degradation.png"))
        add("Final training error against depth", plots.plot_final_vs_depth(groups, out / "final_vs_depth.png"))
    if "responses" in analyses:
        responses = {label: tables.aggregate_lists([_responses(r, data) for r in members])
                     for label, members in _trained(groups).items()}
        add("Layer responses (Fig. 7)", plots.plot_layer_responses(responses, out / "layer_responses.png", plain))
    if "gradients" in analyses:
        norms = {label: _gradients(members[0], data) for label, members in _trained(groups).items()}
        add("Per-layer gradient norms (first seed of each config)",
            plots.plot_gradient_flow(norms, out / "gradient_flow.png", plain))
    return figures


def _depth_form(groups) -> bool:
    """Table 6's form: ResNets only (no plain twins), some of them the paper's CIFAR-10 nets."""
    return not _kinds(groups)[0] and any(tables.is_paper_cifar10(m) for m in groups.values())


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


def _usable(folder: Path, run_dirs) -> bool:
    """A folder a report of these runs may be written into: new, empty, or a report of the same runs."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
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
    cfg = next(iter(groups.values()))[0].config
    sch, opt = cfg["schedule"], cfg["optim"]
    length = f"{sch['epochs']} epochs" if sch.get("epochs") else f"{sch['max_steps']} iterations"
    drops = f", lr x{sch['gamma']} at {sch['milestones_unit']} {sch['milestones']}" if sch["kind"] == "step" else ""
    subset = cfg["data"].get("train_size")
    subset = f", training on a class-balanced subset of {subset} images" if subset else ""
    return (f"Setup (first run): {cfg['data']['dataset']} data at `{cfg['data']['root']}` (val_size "
            f"{cfg['data']['val_size']}{subset}), {sch['kind']} schedule of {length}, lr {opt['lr']}{drops}, batch "
            f"{opt['batch_size']}, weight decay {opt['weight_decay']}, precision {cfg['train']['precision']}.")


def _markdown(title, groups, figures, command, notes, depth_form: bool) -> str:
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
    if depth_form:
        lines += ["In the form of the paper's Table 6 (paper: its full 64k-iteration schedule on CIFAR-10; "
                  "ours: measured on the data and schedule above):", "", tables.depth_table(groups)]
    for caption, path in figures:
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    lines += ["Every evaluation of every run, one row each: [metrics.csv](metrics.csv).", ""]
    return "\n".join(lines)
