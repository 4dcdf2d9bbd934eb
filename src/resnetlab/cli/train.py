HELP = ("Train a ResNet from a recipe, or from one chosen for the data when --recipe is not given "
        "(or continue a run with --resume).")

import json
import sys
from pathlib import Path

from resnetlab.config import apply_overrides, config_to_yaml, list_recipes, load_config, parse_override
from resnetlab.errors import Terminated, UserError

from .arguments import AUTO_PRECISIONS, DEVICE_FORMS, PRECISION_AUTO

# flag -> config key; each flag is a shortcut for --set KEY=VALUE
FLAG_KEYS = {
    "epochs": "schedule.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
    "precision": "train.precision", "device": "train.device", "workers": "train.workers",
    "seed": "train.seed", "init": "finetune.init", "model": "model.name", "image_size": "data.image_size",
}


def add_arguments(parser):
    parser.add_argument("--recipe", help="shipped recipe name (see --list-recipes) or a YAML file; without it, one "
                        "is chosen from --data (CIFAR-sized images: cifar10_fast; photos: finetune from ImageNet "
                        "weights) and printed")
    parser.add_argument("--data", metavar="DIR", help="dataset folder: train/<class>/ images, or CIFAR python files")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="with --out: continue the run there if there is one (a finished one is left as it "
                             "is), else start it (for torchrun --max-restarts and job schedulers that rerun the "
                             "same command)")
    parser.add_argument("--model", metavar="NAME", help="network to train (see resnetlab models)")
    parser.add_argument("--image-size", type=int, metavar="N",
                        help="training crop size in pixels (data.image_size; with imagenet/rrc augmentation "
                        "data.eval_resize and data.scale_min/scale_max follow at the ImageNet ratios, 224 of 256 and of "
                        "[256, 480], unless set)")
    parser.add_argument("--epochs", type=int, help="train this many epochs (replaces schedule.max_steps; not with "
                        "--max-steps)")
    parser.add_argument("--max-steps", type=int, help="train this many optimizer steps (clears schedule.epochs; not "
                        "with --epochs)")
    parser.add_argument("--batch-size", type=int, help="GLOBAL batch size, split across processes")
    parser.add_argument("--lr", type=float, help="base learning rate (never rescaled for you)")
    parser.add_argument("--precision", choices=AUTO_PRECISIONS, help=PRECISION_AUTO)
    parser.add_argument("--device", help=DEVICE_FORMS)
    parser.add_argument("--workers", type=int, help="image-decoding worker processes")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--init", metavar="WEIGHTS", help="weights file, checkpoint, run directory or weights name "
                        "to start from (none: from scratch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config value, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (as the run's config.yaml would hold it) and exit; "
                             "creates nothing")


def build_config(args):
    """The run's config and directory from the command line (library calls only)."""
    from resnetlab.engine.datadir import check_run_data_root, data_overrides

    check_run_length(args)
    if args.resume:
        if args.recipe is not None:  # `--recipe ""` too: a recipe given with --resume is never silently ignored
            raise UserError("--resume continues a run with its own config; drop --recipe (use --set to change values)")
        if args.init is not None:
            raise UserError(f"--resume continues from the run's own checkpoint; drop --init {args.init} (to start a new "
                            f"run from those weights: --init {args.init} --out NEW_RUN)")
        from resnetlab.engine.resume_changes import same_path

        if not Path(args.resume).is_dir():
            raise UserError(f"--resume {args.resume}: no such directory; give the run directory a training wrote")
        if args.out and not same_path(args.out, args.resume):
            raise UserError(f"--resume {args.resume} continues that run in its own directory; drop --out {args.out} "
                            f"(to start a new run from its weights: --init {args.resume} --out {args.out})")
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file() or not saved.read_bytes().strip():  # an empty one would read as the defaults' CIFAR-10
            raise UserError(no_run_to_resume(Path(args.resume), saved.is_file()))
        recipe, out = str(saved), args.resume
    else:
        if not (args.out or args.print_config) or not (args.recipe or args.data):
            raise UserError("give --data DIR and --out RUN_DIR (a recipe is then chosen from the data), or --recipe "
                            "NAME|FILE too, or --resume RUN_DIR")
        recipe, out = args.recipe, args.out
    if args.resume_if_exists and args.resume:
        raise UserError("--resume-if-exists goes with --out; --resume already continues a run")
    overrides = flag_overrides(args)
    if recipe is None:
        from .train_auto import auto_recipe

        recipe, overrides = auto_recipe(args, overrides)
    cfg = load_config(recipe, overrides)
    if args.data:
        cfg = apply_overrides(cfg, data_overrides(args.data, cfg.data.dataset))
    cfg = apply_overrides(cfg, args.set)  # explicit --set wins over everything
    if args.data and cfg.data.dataset == "synthetic":  # generated images: the folder is never read
        warn_once(f"--data {args.data} is not read: data.dataset is synthetic (generated images); for the folder, use "
                  "a recipe of real data or --set data.dataset=folder")
    if args.resume:
        check_run_data_root(cfg)
    if cfg.data.root and not Path(cfg.data.root).expanduser().is_absolute():
        # a relative root from a recipe file or --set means the folder seen from here; the run's
        # config.yaml keeps it absolute so eval and --resume find it from anywhere, as --data does
        cfg = apply_overrides(cfg, [("data.root", str(Path(cfg.data.root).expanduser().absolute()))])
    return cfg, out


def check_run_length(args) -> None:
    """The run's length given both in epochs and in steps (--epochs and --max-steps, or either as
    --set) is refused in one line: whichever the config let win, the other would be silently ignored."""
    epochs = [f"--epochs {args.epochs}"] if args.epochs is not None else []
    steps = [f"--max-steps {args.max_steps}"] if args.max_steps is not None else []
    for item in args.set:
        key, value = parse_override(item)
        if key == "schedule.epochs" and value is not None:
            epochs.append(f"--set {item}")
        elif key == "schedule.max_steps":
            steps.append(f"--set {item}")
    if epochs and steps:
        raise UserError(f"{epochs[0]} and {steps[0]} both set the length of the run; keep one (epochs count passes "
                        "over the training data, max steps count optimizer steps)")


def flag_overrides(args) -> list[tuple[str, object]]:
    """(key, value) of the flags that stand for config keys (--model, --lr ..., --max-steps)."""
    overrides = [(key, flag_value(key, getattr(args, flag))) for flag, key in FLAG_KEYS.items()
                 if getattr(args, flag) is not None]
    if args.max_steps is not None:
        overrides += [("schedule.max_steps", args.max_steps), ("schedule.epochs", None)]
    return overrides


def flag_value(key: str, value):
    """--init none (or null) means no init weights: from scratch."""
    return None if key == "finetune.init" and str(value).lower() in ("none", "null") else value


def existing_run(cfg, out, given: set[str]):
    """--resume-if-exists: the config of the run `out` holds (None: no run there yet). A value the command
    gives (a flag, --set, --data) that differs from the run's is refused rather than continued or
    overwritten; any other difference comes from the recipe as the library or its file says now (a
    requeue after an upgrade: a recipe's default changed): the run goes on as it was made, and says so."""
    from resnetlab.engine.resume_changes import run_differences
    from resnetlab.engine.rundir import saved_config

    saved = saved_config(out)
    if saved is None:
        return None
    differences = run_differences(saved, cfg)
    changed = [d for d in differences if d.split(":", 1)[0] in given]
    if changed:
        raise UserError(f"{out} holds a run with another config ({'; '.join(changed[:4])}"
                        f"{' ...' if len(changed) > 4 else ''}); continue it with --resume {out} or choose another --out")
    if differences:
        warn_once(f"--resume-if-exists: {out} goes on with its own config; the recipe says otherwise now for "
                  f"{'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''} (a new run would take that)")
    return saved


def given_keys(args) -> set[str]:
    """The config keys the command line sets itself: flags, --max-steps, --data, --set."""
    keys = {key for key, _ in flag_overrides(args)} | ({"data.root", "data.dataset"} if args.data else set())
    return keys | {parse_override(item)[0] for item in args.set}


def check_resume_changes(cfg, out) -> str | None:
    """--resume with other values: data and batch size refused here; a new schedule is the returned
    line, to be warned only once the run has accepted it (a refused --resume says only why)."""
    from resnetlab.engine.resume_changes import resume_changes
    from resnetlab.engine.rundir import saved_config

    return resume_changes(checkpoint_config(Path(out)) or saved_config(out), cfg, out)


def checkpoint_config(run: Path):
    """The config the run's last checkpoint was written with: what it trained on, whatever a hand edit
    of RUN/config.yaml says since (an edited batch size was taken silently; a flag was refused)."""
    from resnetlab.config import config_from_dict
    from resnetlab.engine.checkpoint import stored_config

    last = run / "checkpoints" / "last.pt"
    stored = stored_config(last) if last.is_file() else None  # not loaded twice: the run loads and checks it
    return config_from_dict(stored) if stored else None


def no_run_to_resume(run: Path, empty: bool) -> str:
    """Why `--resume RUN` has no config.yaml to read: a training still starting there, one killed
    while it read its data (before config.yaml; only auto_recipe.json says what it was), or no run."""
    from resnetlab.engine.rundir import training_in

    holder = training_in(run)
    if holder:
        return f"{run} is in use by another training ({holder}); wait for it to end"
    try:
        data = json.loads((run / "auto_recipe.json").read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"--resume {run}: {'an empty' if empty else 'no'} config.yaml there; is it a run directory?"
    return (f"--resume {run}: its training stopped before it wrote config.yaml (while it read the data), so no step "
            f"was trained; start it again with the command that made it (resnetlab train --data {data} --out {run} ...)")


def warn_once(line: str | None) -> None:
    """One line per run, not one per torchrun rank."""
    import warnings

    from resnetlab.engine.distributed import dist_info_from_env
    from resnetlab.errors import ResnetlabWarning

    if line and dist_info_from_env().is_main:
        warnings.warn(line, ResnetlabWarning)


def run(args):
    from .console import forgiving_stderr

    if args.list_recipes:
        for name, description in list_recipes().items():
            print(f"{name:20s} {description}")
        return 0
    fresh = bool(args.out) and not args.resume and not args.print_config and not Path(args.out).exists()
    try:
        with forgiving_stderr():  # a console gone away (closed terminal, `| head`, full disk) does not end the run
            return train(args)
    except BaseException:
        if fresh:
            forget_refused_start(Path(args.out))
        raise


def resume_command(out) -> str:
    """The command that continues the run as it was started: under torchrun, with as many processes."""
    import os

    from resnetlab.engine.distributed import dist_info_from_env

    world = dist_info_from_env().world_size
    if world <= 1:
        return f"resnetlab train --resume {out}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = f" (on each of its {world // local} nodes)" if local < world else ""
    return f"torchrun --nproc_per_node={local} -m resnetlab train --resume {out}{nodes}"


def forget_refused_start(out: Path) -> None:
    """A new --out folder whose run was refused before it wrote config.yaml goes again: without
    --recipe, auto_recipe.json was written into it first (RunDirLock removes its own lock file)."""
    if out.is_dir() and not (out / "config.yaml").exists():
        try:
            (out / "auto_recipe.json").unlink(missing_ok=True)
            out.rmdir()
        except OSError:
            pass  # something else is in it now: left as it is


def train(args) -> int:
    from resnetlab.engine import TrainingDiverged, TrainingInterrupted, train_and_evaluate
    from resnetlab.engine.distributed import dist_info_from_env, wait_for_exit

    cfg, out = build_config(args)
    note = check_resume_changes(cfg, out) if args.resume else None
    if args.print_config:
        from resnetlab.engine.setup import check_config

        check_config(cfg)  # a config the run would refuse is not printed as the one it would use
        warn_once(note)
        print(config_to_yaml(cfg), end="")
        return 0
    kept = existing_run(cfg, out, given_keys(args)) if args.resume_if_exists else None
    cfg, resume = kept or cfg, bool(args.resume) or kept is not None
    try:
        summary = train_and_evaluate(cfg, out, resume=resume, resume_note=note)
    except TrainingInterrupted as stop:
        # Under torchrun rank 0 alone reports the stop and fails; every other process ends cleanly, and rank 0
        # waits for those on its machine first: a failing exit makes torchrun SIGTERM the processes still running
        # (rank 0 while it wrote its checkpoint and this line) and report each as failed.
        if not dist_info_from_env().is_main:
            return 0
        print(f"resnetlab train: {stop}. Continue with: {resume_command(out)}", file=sys.stderr, flush=True)
        wait_for_exit(stop.peers)
        return stop.exit_code
    except TrainingDiverged as err:  # every process at once: rank 0 alone reports it, as a stop above
        if not dist_info_from_env().is_main:
            return 0
        wait_for_exit(err.peers)
        raise
    except Terminated:  # where no step can be saved: e.g. under torchrun, waiting on a process that was killed
        last = Path(out) / "checkpoints" / "last.pt"
        if not (dist_info_from_env().is_main and last.is_file()):
            raise
        print(f"resnetlab train: terminated; the last checkpoint, {last}, is kept. Continue with: "
              f"{resume_command(out)}", file=sys.stderr, flush=True)
        return 143
    if dist_info_from_env().is_main:
        from resnetlab.cli.eval import printed_summary

        print(json.dumps(printed_summary(summary.to_dict(), Path(out)), indent=1))
    return 0
