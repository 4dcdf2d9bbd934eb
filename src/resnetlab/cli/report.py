HELP = "Turn run directories into PNG plots and a Markdown table (seeds of one config pooled as mean +- std)."

from pathlib import Path

from resnetlab.errors import UserError


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (or folders of them, e.g. an experiment's --out)")
    parser.add_argument("--out", metavar="DIR", help="where report.md, metrics.csv and the PNGs go (default: a folder "
                        "of its own: RUN_DIR/report/ for one run, report/ beside several; numbered, never another report's)")
    parser.add_argument("--title", default="Results", help="report title")
    parser.add_argument("--responses", action="store_true", help="also plot layer responses (Fig. 7) of finished runs")
    parser.add_argument("--gradients", action="store_true", help="also plot per-layer gradient norms, init vs trained")
    parser.add_argument("--data", metavar="DIR", help="dataset folder for the analyses, if it moved since training")


def expand_run_dirs(paths) -> list[Path]:
    """Run directories as given (each once); a folder without config.yaml stands for the run
    directories inside it."""
    dirs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"{path}: {'a file, not a run directory' if path.exists() else 'no such directory'}")
        if (path / "config.yaml").is_file():
            dirs.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / "config.yaml").is_file())
        if not inside:
            raise UserError(f"{path}: neither a run directory (config.yaml) nor a folder of run directories")
        dirs.extend(inside)
    seen = set()  # a run named twice would count as two seeds of its config
    return [d for d in dirs if not (d.resolve() in seen or seen.add(d.resolve()))]


def run(args):
    import shlex
    import sys

    from resnetlab.reports.experiments import missing_runs
    from resnetlab.reports.report import report_dir, write_report

    dirs = expand_run_dirs(args.runs)
    out = report_dir(dirs, args.out)
    analyses = [name for name, on in (("responses", args.responses), ("gradients", args.gradients)) if on]
    command = "resnetlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # an experiment's --out given as a folder of runs: its planned runs not started yet are named too
    missing = [name for path in map(Path, args.runs) if not (path / "config.yaml").is_file() for name in missing_runs(path)]
    for path in write_report(dirs, out, title=args.title, analyses=analyses, data=args.data, command=command,
                             missing=missing):
        print(path)
    return 0
