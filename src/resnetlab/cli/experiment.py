HELP = "Run one of the paper's experiments (degradation, depth, shortcuts, ...) and write its report."

from resnetlab.errors import UserError


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(p) for p in _csv(text)]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected whole numbers separated by commas, e.g. --seeds 0,1,2") from None


def add_arguments(parser):
    from resnetlab.reports.experiments import EXPERIMENTS

    parser.add_argument("name", nargs="?", choices=list(EXPERIMENTS), metavar="NAME",
                        help="experiment: " + ", ".join(EXPERIMENTS))
    parser.add_argument("--data", metavar="DIR", help="dataset folder (train/<class>/ images, or CIFAR python files)")
    parser.add_argument("--out", metavar="DIR", help="experiment directory: one run directory per run, plus the report")
    parser.add_argument("--models", type=_csv, help="comma-separated models instead of the experiment's default set")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (each run once per seed)")
    parser.add_argument("--epochs", type=int, help="shortened schedule: this many epochs, lr / 10 at 50%% and 75%%")
    parser.add_argument("--steps", type=int, help="shortened schedule: this many steps, lr / 10 at 50%% and 75%%")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config value for every run, e.g. --set train.eval_every=100 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their status; train nothing")
    parser.add_argument("--list", action="store_true", help="print the experiments and exit")


def run(args):
    from resnetlab.config import parse_override
    from resnetlab.reports import experiments as ex

    if args.list:
        for name, exp in ex.EXPERIMENTS.items():
            print(f"{name:22s} {exp.description}")
        return 0
    if not args.name or not args.out:
        raise UserError("give an experiment NAME and --out DIR (see --list)")
    exp = ex.get_experiment(args.name)
    overrides = (ex.compressed_schedule(args.epochs, args.steps) if args.epochs or args.steps else []) + [parse_override(s) for s in args.set]
    runs = ex.plan_runs(exp, args.models, _seeds(args.seeds) if args.seeds else None, overrides)
    if args.dry_run:
        from pathlib import Path

        for spec in runs:
            print(f"{spec.name:32s} {ex.run_status(Path(args.out) / spec.name, ex.run_config(spec, args.data))}")
        return 0
    if not args.data:
        raise UserError("give --data DIR (the dataset the runs train on)")
    from resnetlab.engine import TrainingInterrupted

    try:
        dirs = ex.run_experiment(runs, args.data, args.out)
    except TrainingInterrupted as stop:
        print(f"resnetlab experiment: {stop}. Run the same command again to resume.", flush=True)
        return stop.exit_code
    import shlex
    import sys

    from resnetlab.reports.report import write_report

    command = "resnetlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_report(dirs, args.out, title=f"Experiment {exp.name}: {exp.description}", analyses=exp.analyses,
                         data=args.data, command=command, notes=exp.notes)
    for path in paths:
        print(path)
    return 0
