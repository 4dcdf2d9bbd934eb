"""Run directories -> numbers: loading, grouping by config (seeds pooled), mean +- std, Markdown.

A run directory holds config.yaml, metrics.jsonl (one object per evaluation) and, when finished,
summary.json (written by engine/train.py). Finished runs whose configs differ only in train.seed form
one group, reported as mean +- std (sample std, n - 1) and best over its seeds, when they trained on
the same data (the same images, wherever they lay: datasets.py). Seeds of one config are distinct: a
copy or resume of a run (same config, data and seed) is one measurement, counted once.
A run that is not finished is never pooled with finished ones (progress.py).
"""
from __future__ import annotations

import json
import os
import math
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from resnetlab.config import config_from_dict, config_to_dict, load_yaml
from resnetlab.engine.run_records import MetricsRow, RunSummary, read_metrics
from resnetlab.errors import ResnetlabWarning, UserError, first_line

from . import progress
from .datasets import data_identity, data_notes


@dataclass
class SavedRun:
    """A run directory as read back for tables and plots (not the engine's live setup.Run)."""

    path: Path
    config: dict  # the resolved config.yaml
    metrics: list[MetricsRow]  # metrics.jsonl, one row per evaluation, in step order
    summary: RunSummary | None  # summary.json, None while the run is unfinished
    num_classes: int | None = None  # from classes.json, None when it is missing
    data: str = ""  # the data it trained on (datasets.data_identity): its images, else its data.root

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def seed(self) -> int:
        return self.config["train"]["seed"]


def load_run(path) -> SavedRun:
    """A SavedRun from its directory; UserError when it is not a run directory."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path}: no config.yaml; pass run directories written by `resnetlab train` or `experiment`")
    try:
        config = load_yaml((path / "config.yaml").read_text(encoding="utf-8"))  # bounded: a merge-key bomb is one line
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path / 'config.yaml'} is not readable YAML ({first_line(err)}); was it edited?") from None
    if not isinstance(config, dict) or not config:
        raise UserError(f"{path / 'config.yaml'} is empty or not a run's config; was it edited?")
    try:  # every key there, as this version has it (a hand edit without `train:` was a KeyError traceback)
        config = config_to_dict(config_from_dict(config))
    except UserError as err:
        raise UserError(f"{path / 'config.yaml'}: {err}; was it edited?") from None
    metrics = []
    if (path / "metrics.jsonl").is_file():
        metrics, cut_off = read_metrics(path / "metrics.jsonl")
        if cut_off:  # a training killed mid-write (or still writing): the records before it are whole
            warnings.warn(cut_off, ResnetlabWarning, stacklevel=2)
    else:  # a report without this run's curves says why (a FIFO is never opened: it would wait for ever)
        why = "is not a regular file" if os.path.lexists(path / "metrics.jsonl") else "does not exist (no evaluation yet)"
        warnings.warn(f"{path / 'metrics.jsonl'} {why}: the report has no curves of this run", ResnetlabWarning,
                      stacklevel=2)
    summary = RunSummary.read(path)
    classes = json.loads((path / "classes.json").read_text()) if (path / "classes.json").is_file() else None
    return SavedRun(path, config, sorted(metrics, key=lambda m: m.step), summary,
                    len(classes) if isinstance(classes, list) else None, data_identity(path, config))


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:  # model.kwargs too: model.kwargs.shortcut labels a group
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Keys that do not change what is measured: logging, the seed (pooled), and where the data lives,
# which group_key replaces by the data itself (the same images at another path are the same data).
IGNORED_KEYS = ("train.seed", "data.root", "data.cache_dir", "train.log_every", "train.tensorboard", "train.workers")


def group_key(run: SavedRun) -> str:
    """The run's config but for IGNORED_KEYS, with "data": the data it trained on."""
    flat = {k: v for k, v in _flat(run.config).items() if k not in IGNORED_KEYS}
    return json.dumps({**flat, "data": run.data}, sort_keys=True, default=str)


def _progress(run: SavedRun) -> tuple[bool, int]:
    """How far a run got: finished first, then the most steps logged."""
    return run.summary is not None, run.metrics[-1].step if run.metrics else -1


def distinct_runs(runs: list[SavedRun]) -> list[SavedRun]:
    """One run per (config, data, seed), in the given order; the others are left out with one warning.

    Two runs of one config and one seed on the same data are a copy, or a resume, of one measurement,
    not two: pooled as seeds they would count it twice and shrink the std. Of each such set the run that got
    furthest is kept (finished, then the most steps; the first named on a tie)."""
    sets: dict[tuple, list[SavedRun]] = {}
    for run in runs:
        sets.setdefault((group_key(run), run.seed), []).append(run)
    kept, left_out = set(), []
    for same in sets.values():
        best = max(same, key=_progress)  # max keeps the first of equals
        kept.add(id(best))
        left_out += [f"{r.path} (seed {r.seed}, as {best.path})" for r in same if r is not best]
    if left_out:
        warnings.warn(f"left out {len(left_out)} run(s) repeating the config and seed of a run kept, on the same "
                      f"data (a copy or resume is one measurement, not another seed): {', '.join(left_out[:3])}"
                      f"{' ...' if len(left_out) > 3 else ''}", ResnetlabWarning, stacklevel=2)
    return [r for r in runs if id(r) in kept]


def group_runs(runs: list[SavedRun]) -> dict[str, list[SavedRun]]:
    """Finished runs by config (seed aside), each group labelled by its folder name: the name its runs
    share once a "seedN" part is taken out (plain56-seed0, plain56-seed1 -> plain56), else their names.
    A run not finished is a group of its own, labelled by its whole folder name: its numbers are from
    an earlier step and it has no test numbers (unfinished runs of one config stopped at the same
    step are pooled). Runs repeating another's config and seed count once (distinct_runs)."""
    groups: dict[tuple, list[SavedRun]] = {}
    for run in distinct_runs(runs):
        at = None if progress.finished(run) else ("not finished", progress.last_step(run))
        groups.setdefault((group_key(run), at), []).append(run)
    members_list = [sorted(members, key=lambda r: r.seed) for members in groups.values()]

    def label(members, parent=False):
        return _folder_label([r.path for r in members], parent, strip_seed=progress.finished(members[0]))

    labels = [label(members) for members in members_list]
    if len(set(labels)) < len(labels):  # the same folder name in different places: say where
        labels = [label(members, parent=True) for members in members_list]
    labels = [label if labels.index(label) == i else f"{label} ({i + 1})" for i, label in enumerate(labels)]
    return dict(zip(labels, members_list))


_SEED = re.compile(r"[-_.]?seed[-_]?\d+", re.IGNORECASE)


def _folder_label(paths: list[Path], parent: bool = False, strip_seed: bool = True) -> str:
    names = sorted(f"{p.resolve().parent.name}/{p.name}" if parent else p.name for p in paths)
    shared = {(_SEED.sub("", name) if strip_seed else name) or name for name in names}
    if len(shared) == 1:
        return shared.pop()
    return ", ".join(names) if len(names) <= 3 else f"{names[0]}, ... ({len(names)} runs)"


def setting_notes(groups: dict[str, list[SavedRun]]) -> dict[str, str]:
    """Per group, the config values that tell it apart from other groups of the same model
    (e.g. "shortcut=A", "data=/data/other"); empty when nothing but the seed differs."""
    flats = {label: json.loads(group_key(members[0])) for label, members in groups.items()}
    where = data_notes(groups)  # data told apart by its images, shown by its root
    notes = {}
    for label, members in groups.items():
        same_model = [f for f in flats.values() if f["model.name"] == members[0].model]
        differing = sorted(k for k in set().union(*same_model)
                           if len({json.dumps(f.get(k), default=str) for f in same_model}) > 1)
        notes[label] = " ".join(f"{k.split('.')[-1]}={where[label] if k == 'data' else _short(flats[label].get(k))}"
                                for k in differing)
    return notes


def _short(value) -> str:
    if value is None:  # the key is absent from this group's config: the model's default
        return "default"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "default"
    return str(value)


def final_numbers(run: SavedRun) -> dict:
    """The errors (%) a table reports for one run; None where the run has not produced them."""
    last = run.metrics[-1] if run.metrics else MetricsRow(step=None)
    summary = run.summary or RunSummary()
    return {
        "steps": last.step, "train_err": last.train_err, "train_loss": last.train_loss, "val_err": last.val_top1_err,
        "best_val_err": summary.best_val_top1_err,
        "test_err": summary.test.get("last", {}).get("top1_err"), "test_err_best_val": summary.test.get("best", {}).get("top1_err"),
    }


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (n - 1); 0.0 for a single run
    best: float  # the minimum: every number aggregated here is an error
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return number(self.mean)
        return f"{number(self.mean)} ± {number(self.std)}"


def number(value: float) -> str:
    """Two decimals, as errors in % are read; a huge value (the loss of a diverged run) in powers of ten."""
    return f"{value:.2f}" if abs(value) < 1e6 else f"{value:.2g}"


def aggregate(values) -> Stat | None:
    """mean +- std and best of the non-missing values; None when there are none."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(statistics.fmean(values), std, min(values), len(values))


def group_stats(members: list[SavedRun]) -> dict[str, Stat | None]:
    rows = [final_numbers(r) for r in members]
    return {key: aggregate(row[key] for row in rows) for key in rows[0]}


def _cell(stat: Stat | None, runs: int) -> str:
    """The stat, with its count when fewer of the group's runs have the number than the seeds column says."""
    if stat is None:
        return "–"
    return str(stat) if stat.n == runs else f"{stat} (n={stat.n})"


def results_table(groups: dict[str, list[SavedRun]]) -> str:
    """One row per group: final training error and loss, validation and test error (%), mean ± std over seeds;
    a "setting" column when groups of one model differ in more than the seed."""
    notes = setting_notes(groups)
    setting = any(notes.values())
    lines = ["| run | model |" + (" setting |" if setting else "") + " seeds | steps | train err | train loss | "
             "val err (last) | test err (last) | test err (best val) | best test |",
             "|---|---|" + ("---|" if setting else "") + "---|---|---|---|---|---|---|---|"]
    for label, members in groups.items():
        s, n = group_stats(members), len(members)
        steps = steps_cell(members)
        if not progress.finished(members[0]):
            steps = progress.steps_cell(members)
        best = f"{s['test_err'].best:.2f}" if s["test_err"] else "–"
        lines.append(f"| {label} | {members[0].model} |" + (f" {notes[label] or '–'} |" if setting else "")
                     + f" {n} | {steps} | {_cell(s['train_err'], n)} | {_cell(s['train_loss'], n)} | "
                     f"{_cell(s['val_err'], n)} | {_cell(s['test_err'], n)} | {_cell(s['test_err_best_val'], n)} | {best} |")
    apart = [label for label, members in groups.items() if len(_last_steps(members)) > 1]
    if apart:
        lines += ["", f"Seeds of {', '.join(apart)} stopped at different steps: `steps` is their range, the other "
                      "numbers pool each seed's last evaluation, and the curves average the seeds logged at each step."]
    return "\n".join(lines) + "\n"


def steps_cell(members: list[SavedRun]) -> str:
    """The steps of the seeds' last evaluations: one number, or their range where they stopped at
    different steps (train.stop_at_val_top1: each seed stops when it reaches the target)."""
    steps = _last_steps(members)
    if not steps:
        return "–"
    return str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def _last_steps(members: list[SavedRun]) -> list[int]:
    return sorted({r.metrics[-1].step for r in members if r.metrics})


def _per_run(members: list[SavedRun], key: str) -> list[dict]:
    return [{m.step: getattr(m, key) for m in r.metrics if getattr(m, key) is not None} for r in members]


def curve(members: list[SavedRun], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of a MetricsRow field at every step a run logged it, over the runs that did
    (seeds_per_step counts them): seeds that stopped at different steps keep all their points."""
    per_run = _per_run(members, key)
    steps = sorted(set().union(*per_run))
    at = [[p[s] for p in per_run if s in p] for s in steps]
    return steps, [statistics.fmean(v) for v in at], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in at]


def seeds_per_step(members: list[SavedRun], key: str) -> list[int]:
    """How many runs each point of `curve` averages."""
    per_run = _per_run(members, key)
    return [sum(s in p for p in per_run) for s in sorted(set().union(*per_run))]


def aggregate_lists(lists: list[list[float]]) -> list[float]:
    """Element-wise mean of equally long lists (per-layer values of several seeds)."""
    if not lists or len({len(v) for v in lists}) != 1:
        raise UserError(f"cannot average per-layer values of different lengths: {[len(v) for v in lists]}")
    return [statistics.fmean(values) for values in zip(*lists)]
