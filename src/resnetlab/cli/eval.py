HELP = ("Top-1/top-5 and per-class accuracy of a checkpoint, run directory (its best.pt) or published weights, "
        "by a testing protocol, with its confusion matrix.")

import json
import warnings
from pathlib import Path

from resnetlab.errors import ResnetlabWarning, UserError
from resnetlab.files import check_writable

from .arguments import AUTO_INFERENCE_PRECISIONS, INFERENCE_AUTO, PROTOCOLS, add_checkpoint_argument, positive_int

PER_CLASS_PRINTED = 50  # more classes than this: the table goes to per_class.csv only


def add_arguments(parser):
    add_checkpoint_argument(parser)
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run trained on)")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="default: the run's own, as summary.json scored it "
                        "(its train.test_protocol on test, the centre view on val, as its validations)")
    parser.add_argument("--batch-size", type=positive_int, help="default: the run's optim.batch_size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=AUTO_INFERENCE_PRECISIONS,
                        help=f"default: the run's own; {INFERENCE_AUTO}; an explicit precision runs eagerly as in training; int8: quantized on the CPU, calibrated on 256 training images")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (counted in a warning) "
                        "instead of stopping at the first")
    parser.add_argument("--out", metavar="DIR", help="folder for confusion.csv/.png and per_class.csv (default: "
                        "RUN/eval/CKPT-SPLIT-PROTOCOL/, -PRECISION appended when --precision is given, for a run's "
                        "checkpoint, else a new folder under runs/eval/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (per-class numbers included)")


def run(args):
    from resnetlab.engine import evaluate_checkpoint
    from resnetlab.engine.confusion import refuse_foreign_eval_files

    from resnetlab.inference.fastpath import prepare_inference

    from .console import ImageProgress

    if args.out:  # a folder asked for by name that cannot take the files: say so before evaluating
        check_writable(Path(args.out) / "confusion.csv")
        refuse_foreign_eval_files(args.out)
    with ImageProgress("eval") as progress:
        report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.protocol, args.device,
                                     args.precision, args.batch_size, args.workers, fast_path=prepare_inference,
                                     skip_bad=args.skip_bad, progress=progress)
    matrix = report.pop("confusion")  # in the CSV; a 1000-class matrix is too much for one JSON line
    written, failed = write_files_or_warn(report, matrix, args.out, args.precision)
    report["files"] = [str(p) for p in written]
    print_report(report, args.json)
    if failed:  # the folder asked for could not take the files (a disk that filled): said after the numbers
        raise failed
    return 0


def print_report(report: dict, as_json: bool) -> None:
    from resnetlab.engine.confusion import ClassResult, format_table

    if as_json:
        print(json.dumps(report))
        return
    print(f"{report['checkpoint']}  split={report['split']}  protocol={report['protocol']}  n={report['n']}  "
          f"precision={report['precision']}")
    print(f"  top-1 acc {report['top1']:6.2f}%   error {report['top1_err']:6.2f}%")
    if report.get("balanced_top1") is not None:
        print(f"  balanced  {report['balanced_top1']:6.2f}%   (top-1 of each class, averaged: each class counts alike)")
    if len(report["per_class"]) > 5:
        print(f"  top-5 acc {report['top5']:6.2f}%   error {report['top5_err']:6.2f}%")
    else:  # every class is among the top 5: always 100%
        print(f"  top-5: - (of {len(report['per_class'])} classes, every one is in the top 5)")
    if len(report["per_class"]) <= PER_CLASS_PRINTED:
        print("per class (%; '-': undefined, e.g. the precision of a class never predicted):")
        print(format_table([ClassResult(**r) for r in report["per_class"]]))
    if report["files"]:
        print(f"confusion matrix and per-class numbers: {', '.join(report['files'])}")


def write_files_or_warn(report: dict, matrix, out, precision) -> tuple[list, UserError | None]:
    """(the confusion matrix's files, the error of a folder the user named that could not take them).
    Where the default folder (inside a read-only run, say) cannot take them, a warning instead; a
    named folder was checked before evaluating, and one that fails even so (a disk that filled) is
    an error once the evaluation just done is printed."""
    from resnetlab.engine.confusion import write_eval_files

    try:
        return write_eval_files(report, matrix, out, precision), None
    except UserError as err:
        if out:
            return [], err
        warnings.warn(f"{err} to keep the files; the numbers follow", ResnetlabWarning)
        return [], None


def printed_summary(summary: dict, out: Path) -> dict:
    """summary.json as `train` prints it: past PER_CLASS_PRINTED classes (as eval's table), each test report's
    per-class list stays in the file, named there (1000 classes printed 18,000 lines at the end of a run)."""
    test = {}
    for name, report in summary.get("test", {}).items():
        if isinstance(report, dict) and len(report.get("per_class", ())) > PER_CLASS_PRINTED:
            report = {**{k: v for k, v in report.items() if k != "per_class"}, "per_class_in": str(out / "summary.json")}
        test[name] = report
    return {**summary, "test": test} if "test" in summary else summary
