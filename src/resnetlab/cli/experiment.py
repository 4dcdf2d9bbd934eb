HELP = "Run one of the paper's experiments (degradation, depth, shortcuts, ...) and write its report."

import re
import sys

from resnetlab.cli.arguments import positive_int
from resnetlab.errors import Terminated, UserError


def _items(text: str, option: str) -> list[str]:
    """The comma-separated items of `option`; an empty one (0,,1 or a trailing comma) is refused, not dropped."""
    items = [p.strip() for p in text.split(",")]
    if items == [""]:
        return []  # the whole value is empty: plan_runs says so
    if "" in items:
        raise UserError(f"{option} {text!r}: an empty item between commas; give e.g. {option} "
                        f"{'0,1,2' if option == '--seeds' else 'resnet20,resnet32'}")
    return items


def _models(text: str) -> list[str]:
    return _items(text, "--models")


def _seeds(text: str) -> list[int]:
    items = _items(text, "--seeds")
    # ASCII digits only: int() would also take '1_000' and other scripts' digits ('٣' is 3)
    if not all(re.fullmatch(r"[0-9]+", p) for p in items):
        raise UserError(f"--seeds {text!r}: expected whole numbers separated by commas, e.g. --seeds 0,1,2")
    return [int(p) for p in items]


def add_arguments(parser):
    from resnetlab.reports.experiments import EXPERIMENTS

    parser.add_argument("name", nargs="?", choices=list(EXPERIMENTS), metavar="NAME",
                        help="experiment: " + ", ".join(EXPERIMENTS))
    parser.add_argument("--data", metavar="DIR", help="dataset folder (train/<class>/ images, or CIFAR python files)")
    parser.add_argument("--out", metavar="DIR", help="experiment directory: one run directory per run, plus the report")
    parser.add_argument("--models", help="comma-separated models instead of the experiment's default set")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (each run once per seed)")
    # positive_int: 0 is refused, never taken for "not given" (the paper's full schedule)
    for unit in ("epochs", "steps"):
        parser.add_argument(f"--{unit}", type=positive_int,
                            help=f"shortened schedule: this many {unit}, lr / 10 at 50%% and 75%%")
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
    shortened = args.epochs is not None or args.steps is not None
    overrides = ex.compressed_schedule(args.epochs, args.steps) if shortened else []
    sets = [parse_override(s) for s in args.set]
    overrides += sets
    length = [k for k, _ in sets if k in ("schedule.epochs", "schedule.max_steps", "schedule.milestones")]
    if shortened and length:  # the later --set won, and the shortened schedule's milestones no longer fit it
        raise UserError(f"--{'epochs' if args.epochs is not None else 'steps'} and --set {length[0]} both set the length "
                        "of the runs; keep one")
    for key, option in (("model.name", "--models"), ("train.seed", "--seeds")):  # each run's own: set per run
        if any(k == key for k, _ in overrides):
            raise UserError(f"--set {key} would give every run of the experiment the same value (the run folders' "
                            f"names and the report would not say so); use {option}")
    models = None if args.models is None else _models(args.models)
    runs = ex.plan_runs(exp, models, None if args.seeds is None else _seeds(args.seeds), overrides)
    ex.check_out(args.out, exp.name, ex.run_config(runs[0], args.data).data if runs else None)
    if args.dry_run:
        from pathlib import Path

        for spec in runs:
            print(f"{spec.name:32s} {ex.run_status(Path(args.out) / spec.name, ex.run_config(spec, args.data))}")
        return 0
    if not args.data:
        raise UserError("give --data DIR (the dataset the runs train on)")
    return _run_and_report(exp, runs, args)


def _command() -> str:
    import shlex
    import sys

    return "resnetlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _run_and_report(exp, runs, args) -> int:
    """Train, then report; a stop anywhere says, as `train` does, what was kept and how to go on."""
    from resnetlab.engine import TrainingInterrupted
    from resnetlab.reports.experiments import experiment_run_dirs, run_experiment
    from resnetlab.reports.report import write_report

    from .console import forgiving_stderr

    again = f"Continue with: {_command()} (finished runs are skipped, a stopped one resumes)"
    try:
        with forgiving_stderr():  # a console gone away (closed terminal, full disk) does not end the runs
            dirs = run_experiment(runs, args.data, args.out, experiment=exp.name)
        # the report is the experiment's, not this command's: a rerun with fewer --models or --seeds
        # adds runs to it, and those earlier commands left (finished or not) stay in it
        every = experiment_run_dirs(args.out, exp)
        earlier = [d.name for d in every if d.name not in {p.name for p in dirs}]
        notes = exp.notes
        if earlier:
            notes += ("\n\n" if notes else "") + ("Besides the runs of the command above, those earlier commands "
                                                  f"left in this folder: {', '.join(earlier)}.")
        paths = write_report(every, args.out, title=f"Experiment {exp.name}: {exp.description}", analyses=exp.analyses,
                             data=args.data, command=_command(), notes=notes)
    except TrainingInterrupted as stop:
        print(f"resnetlab experiment: {stop}. {again}", file=sys.stderr, flush=True)
        return stop.exit_code
    except KeyboardInterrupt as stop:  # between runs, in the report, or a second Ctrl-C: what was saved is kept
        name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        print(f"resnetlab experiment: stopped by {name}; finished runs and saved checkpoints are kept. {again}",
              file=sys.stderr, flush=True)
        return 143 if isinstance(stop, Terminated) else 130
    for path in paths:
        print(path)
    return 0
