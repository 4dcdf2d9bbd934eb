"""metrics.csv beside metrics.jsonl: the same records, one row per evaluation, for a spreadsheet.

metrics.jsonl stays the record of truth (appended once per evaluation); the CSV is rewritten
from it after every evaluation, so the two always agree, after a resume too. Columns: the
engine's metrics in a fixed order, then any other keys in the order they first appear; an
absent or null value is an empty cell.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from resnetlab.errors import UserError
from resnetlab.files import write_text_atomic

from .run_records import MetricsRow

COLUMNS = MetricsRow.fields()


def read_jsonl(path) -> list[MetricsRow]:
    """The rows of a metrics.jsonl; a line that is not a row (cut short by a crash) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(MetricsRow.from_dict(json.loads(line), path))
        except (json.JSONDecodeError, UserError):
            continue
    return rows


def metrics_csv(records: list[dict], first: tuple[str, ...] = ()) -> str:
    """CSV text of metric rows (MetricsRow.to_dict()); `first` names columns to put before the engine's (e.g. "run")."""
    columns = list(first) + [c for c in COLUMNS if c not in first]
    for record in records:
        columns += [k for k in record if k not in columns]
    used = [c for c in columns if any(r.get(c) is not None for r in records) or c in first or c in COLUMNS[:2]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(used)
    for record in records:
        writer.writerow(["" if record.get(c) is None else _cell(record[c]) for c in used])
    return buffer.getvalue()


def _cell(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def write_metrics_csv(run_dir) -> Path | None:
    """RUN/metrics.csv from RUN/metrics.jsonl (None when there is no metrics.jsonl yet)."""
    source = Path(run_dir) / "metrics.jsonl"
    if not source.is_file():
        return None
    return write_text_atomic(Path(run_dir) / "metrics.csv", metrics_csv([row.to_dict() for row in read_jsonl(source)]))
