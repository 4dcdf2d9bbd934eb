"""How far a run got: finished or not, the step of its last evaluation, the steps it planned; and the
words a report uses for runs that are not finished, or planned and never started.

A run is finished once it wrote summary.json (engine/train.py, after its final test). Until then its
numbers are those of its last evaluation, at an earlier step than its finished seeds' and without
test numbers: tables.group_runs never pools it with finished runs, and a report says so here.
"""
from __future__ import annotations


def finished(run) -> bool:
    return run.summary is not None


def last_step(run) -> int | None:
    """The step of the run's last evaluation; None before its first."""
    return run.metrics[-1].step if run.metrics else None


def planned_steps(run) -> int | None:
    """The steps the run's schedule asks for. A schedule in epochs is converted with the steps per
    epoch a logged row implies (its step / its epoch); None while no row says that."""
    schedule = run.config.get("schedule") or {}
    if not schedule.get("epochs"):
        return schedule.get("max_steps")
    row = next((m for m in reversed(run.metrics) if m.epoch), None)
    return round(schedule["epochs"] * row.step / row.epoch) if row else None


def _of(run) -> str:
    planned = planned_steps(run)
    return "" if planned is None else f" of {planned}"


def steps_cell(members) -> str:
    """The steps column of an unfinished group (its runs share their last step): "100 of 200, not finished"."""
    step = last_step(members[0])
    return f"{'–' if step is None else step}{_of(members[0])}, not finished"


def _why(run) -> str:
    step = last_step(run)
    if step is not None:
        return f"its last evaluation was at step {step}{_of(run)} (numbers from it, no test numbers)"
    every = (run.config.get("train") or {}).get("eval_every")
    first = f"at step {every}{_of(run)}" if every else "at the end of the first epoch"
    return f"no evaluation yet (the first comes {first})"


def unfinished_notes(groups, missing=()) -> str:
    """Markdown: each run that is not finished and why its row looks as it does, then the planned runs
    that were never started (`missing`, folder names); empty when every run finished."""
    runs = [run for members in groups.values() for run in members if not finished(run)]
    lines = []
    if runs:
        lines += ["Not finished (stopped, or still training): each is a row of its own, never pooled with "
                  "finished seeds.", ""]
        lines += [f"- `{run.path.name}`: not finished; {_why(run)}" for run in runs]
        lines.append("")
    if missing:
        lines += [f"Planned but not started: {', '.join(f'`{name}`' for name in missing)}.", ""]
    return "\n".join(lines)
