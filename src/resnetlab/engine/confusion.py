"""Per-class results of an evaluation: precision and recall from the confusion matrix, and the
files that training and `resnetlab eval` write (confusion matrix as CSV and PNG, per-class CSV).

The matrix is counted on the device in the evaluation pass itself (`evaluate.count_confusion`):
rows are true classes, columns top-1 predictions, so the diagonal sums to the top-1 hits.
Per class, in percent: recall = correct / images of the class (which is the accuracy on that
class), precision = correct / images predicted as the class, F1 their harmonic mean. A ratio
whose denominator is 0 (a class never predicted, or with no images in the split) is undefined,
and is reported as None (null in JSON, an empty CSV cell, "-" in text), never as 0: a class
the model never predicts has recall 0 and no precision at all.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import unicodedata
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resnetlab.errors import ResnetlabWarning, UserError, option
from resnetlab.files import StorageError, write_files_atomic

from .checkpoint import run_dir_of


@dataclass(frozen=True)
class ClassResult:
    name: str
    images: int  # images of the class in the split (row sum)
    predicted: int  # images predicted as the class (column sum)
    correct: int  # the diagonal entry
    recall: float | None  # % of the class's images predicted as it: its accuracy
    precision: float | None  # % of the predictions of the class that are right
    f1: float | None


def _ratio(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def per_class(matrix: torch.Tensor, classes) -> list[ClassResult]:
    """One ClassResult per class from an integer (C, C) matrix, rows = true, columns = predicted."""
    matrix = torch.as_tensor(matrix).long().cpu()
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"a {len(classes)}-class confusion matrix must be {len(classes)}x{len(classes)}, "
                         f"got {tuple(matrix.shape)}")
    rows, cols, diag = matrix.sum(1).tolist(), matrix.sum(0).tolist(), matrix.diagonal().tolist()
    results = []
    for name, images, predicted, correct in zip(classes, rows, cols, diag):
        recall, precision = _ratio(correct, images), _ratio(correct, predicted)
        if recall is None or precision is None:
            f1 = None
        else:  # both defined; 0 when the class is predicted and present but never right
            f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        results.append(ClassResult(str(name), images, predicted, correct, recall, precision, f1))
    return results


def balanced_top1(matrix: torch.Tensor) -> float | None:
    """Mean of the per-class top-1 accuracies (recall), in %, over the classes with images: sklearn's
    balanced accuracy. Plain top-1 weighs classes by their counts: 1000 cats and 5 dogs score 99.5% for a
    model that never says dog; this says 50%. None when no class has images."""
    matrix = torch.as_tensor(matrix).double().cpu()
    rows = matrix.sum(1)
    present = rows > 0
    return float((matrix.diagonal()[present] / rows[present]).mean() * 100) if bool(present.any()) else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(results: list[ClassResult]) -> str:
    """The per-class numbers as aligned text (percent; '-' where undefined)."""
    width = max([len("class")] + [columns(r.name) for r in results])
    lines = [f"  {'class':<{width}}  {'images':>7}  {'predicted':>9}  {'accuracy=recall':>15}  {'precision':>9}  {'F1':>6}"]
    for r in results:
        lines.append(f"  {r.name}{' ' * (width - columns(r.name))}  {r.images:>7}  {r.predicted:>9}  "
                     f"{_pct(r.recall):>15}  {_pct(r.precision):>9}  {_pct(r.f1):>6}")
    return "\n".join(lines)


def columns(text: str) -> int:
    """Terminal columns `text` takes: CJK and emoji are two wide, combining accents none (len() kept
    the rows after a class named in Chinese one column out of line)."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def tick_label(name: str, most: int = 24) -> str:
    """A class name short enough for an axis: a long one squeezed the matrix out of the figure (the
    CSVs beside the plot hold every name whole)."""
    return name if len(name) <= most else f"{name[:most - 9]}…{name[-8:]}"


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def confusion_csv(matrix: torch.Tensor, classes) -> str:
    """First row: the predicted classes; then one row per true class with its counts."""
    return _csv_text([["true \\ predicted", *classes]]
                     + [[name, *row] for name, row in zip(classes, torch.as_tensor(matrix).tolist())])


def per_class_csv(results: list[ClassResult]) -> str:
    def cell(value):
        return "" if value is None else round(value, 4)

    return _csv_text([["class", "images", "predicted", "correct", "recall", "precision", "f1"]]
                     + [[r.name, r.images, r.predicted, r.correct, cell(r.recall), cell(r.precision), cell(r.f1)]
                        for r in results])


def confusion_png(matrix: torch.Tensor, classes, title: str = "") -> bytes:
    """PNG of the matrix, each row coloured by its share of the class (recall on the diagonal),
    annotated with the counts when there are few enough classes to read them. Class names in a script
    the font lacks (CJK in DejaVu Sans) are drawn as boxes without matplotlib's warning per glyph, which
    showed its source lines on stderr; the CSVs hold the names."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        warnings.filterwarnings("ignore", message="Tight layout not applied")  # many long names: drawn as they fit
        return _plot_confusion(matrix, classes, title)


def _plot_confusion(matrix: torch.Tensor, classes, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: never switches the backend of a notebook

    matrix = torch.as_tensor(matrix).long()
    n = len(classes)
    shares = (matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    side = min(max(4.0, 0.45 * n + 2.5), 20.0)
    fig = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 60:
        labels = [tick_label(str(c)) for c in classes]
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=7 if n > 20 else 9)
        ax.set_yticks(range(n), labels, fontsize=7 if n > 20 else 9)
    if n <= 30:
        for i, row in enumerate(matrix.tolist()):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8 if n > 12 else 10,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    return png.getvalue()


def write_per_class_files(folder, matrix: torch.Tensor, classes, tag: str = "", title: str = "") -> list[Path]:
    """confusion{_tag}.csv, confusion{_tag}.png and per_class{_tag}.csv in `folder`; returns their paths.
    Written together (files.write_files_atomic): a disk that fills half-way leaves the earlier three
    as they were, never new ones beside old ones of another evaluation."""
    folder, suffix = Path(folder), f"_{tag}" if tag else ""
    files = {folder / f"confusion{suffix}.csv": confusion_csv(matrix, classes).encode(),
             folder / f"confusion{suffix}.png": confusion_png(matrix, classes, title),
             folder / f"per_class{suffix}.csv": per_class_csv(per_class(matrix, classes)).encode()}
    write_files_atomic(files)
    return list(files)


def record_per_class(test: dict, classes, folder=None, split: str = "test") -> None:
    """In a summary's {"last": report, "best": report}: keep the per-class numbers of the weights
    `resnetlab eval RUN` scores (best, else last) under "per_class", drop every report's matrix,
    and write the files into `folder` (None: write nothing, e.g. on ranks other than 0)."""
    chosen = "best" if "best" in test else "last"
    matrix = test[chosen]["confusion"]
    for report in test.values():
        report.pop("confusion", None)  # "best" may be the very same dict as "last"
    test[chosen]["per_class"] = [asdict(r) for r in per_class(matrix, classes)]
    if folder is None:
        return
    try:
        write_per_class_files(folder, matrix, classes, split, f"{split} split, {chosen} weights")
    except (OSError, StorageError) as err:  # the run itself is done and saved: say so rather than lose the summary
        warnings.warn(f"could not write the confusion matrix into {folder} ({_reason(err)}); the per-class "
                      "numbers are in summary.json", ResnetlabWarning, stacklevel=2)


EVAL_HEADERS = {"confusion.csv": "true \\ predicted,", "per_class.csv": "class,images,predicted,correct,"}


def refuse_foreign_eval_files(folder) -> None:
    """`eval --out DIR` replaces an earlier evaluation's files, never a user's own of the same names
    (a hand-made confusion.csv was overwritten without a word): the CSVs must start as ours do, and
    confusion.png is ours only beside one of them."""
    folder = Path(folder)
    ours = [n for n, head in EVAL_HEADERS.items() if (folder / n).is_file() and _starts_with(folder / n, head)]
    foreign = [n for n in ("confusion.csv", "confusion.png", "per_class.csv")
               if (folder / n).exists() and n not in ours and not (n == "confusion.png" and ours)]
    if foreign:
        raise UserError(f"--out {folder} already holds {', '.join(foreign)}, not written by an evaluation; give a new "
                        "folder, or one of an earlier evaluation")


def _starts_with(path: Path, head: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(len(head)) == head
    except OSError:
        return False


def default_eval_dir(checkpoint, split: str, protocol: str, precision: str | None = None,
                     other_data: str | None = None) -> Path:
    """Where `resnetlab eval` writes its files when not told: inside the run for a checkpoint of a
    run directory (RUN/eval/best-test-center/, refreshed by the same evaluation; at a precision
    asked for, not the run's own, RUN/eval/best-test-center-int8/; scored on another folder than the
    run's own, RUN/eval/best-test-center-on-FOLDER-HASH/, HASH of the folder's absolute path: two folders
    of one name, /a/test and /b/test, wrote into one), otherwise a new numbered folder under
    ./runs/eval/ (never one that already exists)."""
    path = Path(checkpoint)
    name = "-".join([path.stem, split, protocol] + ([precision] if precision else [])
                    + ([f"on-{Path(other_data).name}-{_path_hash(other_data)}"] if other_data else []))
    run = run_dir_of(path)
    if run is not None:
        return run / "eval" / name
    return numbered(Path("runs") / "eval" / name)


def _path_hash(folder: str) -> str:
    return hashlib.sha256(os.fsencode(Path(folder).expanduser().absolute())).hexdigest()[:6]


def numbered(folder: Path) -> Path:
    """`folder` if it does not exist yet, else the first free folder-2, folder-3, ..."""
    candidate, n = folder, 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def write_eval_files(report: dict, matrix, out=None, precision: str | None = None) -> list[Path]:
    """The files of one `evaluate_checkpoint` report, into `out` or `default_eval_dir` (`precision`:
    the one asked for, None for the run's own)."""
    classes = [r["name"] for r in report["per_class"]]
    folder = Path(out) if out else default_eval_dir(report["checkpoint"], report["split"], report["protocol"],
                                                    precision, report.get("data"))
    title = f"{Path(report['checkpoint']).name}, {report['split']} split, {report['protocol']} protocol"
    made = not folder.exists()
    try:
        return write_per_class_files(folder, matrix, classes, title=title)
    except (OSError, StorageError) as err:
        if made:  # no empty folder that looks like a result (one that is not empty is left as it is)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(f"cannot write the confusion matrix into {folder} ({_reason(err)}); "
                        + option("choose another --out DIR" if out else "pass --out DIR",
                                 f"choose another folder for {'out' if out else 'the files (out=DIR)'}")) from err


def _reason(err: Exception) -> str:
    """The storage's own words: a StorageError (files.storage_errors) keeps the OSError it came from."""
    cause = err.__cause__ if isinstance(err, StorageError) and isinstance(err.__cause__, OSError) else err
    return getattr(cause, "strerror", None) or str(cause)
