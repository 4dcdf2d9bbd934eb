"""The paper's experiments as plans of training runs, and a runner that can stop and go on.

An experiment is a list of `RunSpec`s (a recipe, config overrides, a seed, a directory name)
plus the report made from them. `run_experiment` trains each run with the engine's
`train_and_evaluate`, in order, and is safe to call again: a run whose summary.json exists with
the same config is skipped, a run interrupted part-way is resumed from its checkpoint, and a
directory holding a run of a *different* config is refused rather than overwritten.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resnetlab.config import Config, apply_overrides, config_to_dict, list_recipes, load_config, load_yaml
from resnetlab.errors import UserError
from resnetlab.files import write_text_atomic


@dataclass(frozen=True)
class RunSpec:
    name: str  # directory name under the experiment's --out, e.g. "plain56-seed0"
    recipe: str  # shipped recipe name or YAML path
    overrides: tuple = ()  # (key, value) pairs applied on top of the recipe
    seed: int = 0


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    models: tuple[str, ...]  # default model list (the CLI's --models replaces it)
    recipe_for: object  # model name -> (recipe, extra overrides)
    variants: tuple = ((None, ()),)  # (label, overrides) per variant of each model (shortcut options)
    analyses: tuple[str, ...] = ()  # extra reports: "responses", "gradients"
    default_seeds: tuple[int, ...] = (0,)
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _cifar_recipe(model: str):
    """CIFAR runs use the paper's recipe of the model (cifar10_resnet56, cifar10_plain56, ...)."""
    return f"cifar10_{model}", ()


def _imagenet_recipe(model: str):
    """ImageNet-style twins share the residual net's recipe; the plain twin only renames the model."""
    residual = model.replace("plain", "resnet")
    return f"imagenet_{residual}", (("model.name", model),)


def _shortcut_variants(options=("A", "B", "C")):
    return tuple((f"shortcut{o}", (("model.kwargs", {"shortcut": o}),)) for o in options)


EXPERIMENTS = {
    "degradation": Experiment(
        "degradation", "Fig. 6: plain vs residual CIFAR-10 nets of several depths, one schedule",
        ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56"),
        _cifar_recipe, analyses=("responses", "gradients")),
    "degradation-imagenet": Experiment(
        "degradation-imagenet", "Fig. 4: plain vs residual 18/34-layer ImageNet nets on a folder dataset",
        ("plain18", "plain34", "resnet18", "resnet34"), _imagenet_recipe),
    "depth": Experiment(
        "depth", "Table 6: CIFAR-10 ResNets of increasing depth, several seeds",
        ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"), _cifar_recipe, default_seeds=(0, 1, 2),
        notes="resnet1202 is feasible only on a GPU; add it with --models resnet20,...,resnet1202"),
    "shortcuts": Experiment(
        "shortcuts", "Table 3: shortcut options A (zero-pad), B (projection where shapes change), C (all projections)",
        ("resnet32",), _cifar_recipe, variants=_shortcut_variants()),
    "shortcuts-imagenet": Experiment(
        "shortcuts-imagenet", "Table 3 on a folder dataset: ResNet-34 with shortcut options A/B/C",
        ("resnet34",), _imagenet_recipe, variants=_shortcut_variants()),
    "layer-responses": Experiment(
        "layer-responses", "Fig. 7: std of each 3x3 layer's BN output in trained plain and residual nets",
        ("plain20", "plain56", "resnet20", "resnet56"), _cifar_recipe, analyses=("responses",)),
    "gradient-flow": Experiment(
        "gradient-flow", "Per-layer gradient norms at initialisation and after training, plain vs residual",
        ("plain20", "plain56", "resnet20", "resnet56"), _cifar_recipe, analyses=("gradients",)),
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def compressed_schedule(epochs: int | None = None, steps: int | None = None) -> list[tuple[str, object]]:
    """The paper's step schedule squeezed into `epochs` (or `steps`): lr / 10 at 50% and 75% of training."""
    if (epochs is None) == (steps is None):
        raise UserError("give exactly one of --epochs and --steps for a shortened schedule")
    length, unit = (epochs, "epochs") if epochs is not None else (steps, "steps")
    if length <= 0:
        raise UserError(f"--{unit} must be > 0, got {length}")
    size = [("schedule.epochs", epochs)] if epochs is not None else [("schedule.epochs", None), ("schedule.max_steps", steps)]
    marks = [length / 2, length * 3 / 4] if unit == "epochs" else [length // 2, length * 3 // 4]
    return [("schedule.kind", "step"), *size, ("schedule.milestones_unit", unit), ("schedule.milestones", marks)]


def plan_runs(exp: Experiment, models=None, seeds=None, overrides=()) -> list[RunSpec]:
    """Every run of the experiment: models x variants x seeds, in that order (shallow nets first)."""
    models = tuple(exp.models if models is None else models)  # an empty list is refused, not taken as "default"
    seeds = tuple(exp.default_seeds if seeds is None else seeds)
    for flag, values, default in (("--models", models, exp.models), ("--seeds", seeds, exp.default_seeds)):
        if not values:
            raise UserError(f"{flag} is empty: give at least one, or leave {flag} out for the experiment's "
                            f"{','.join(map(str, default))}")
        if len(set(values)) != len(values):  # a run planned twice is trained once and reported as two seeds
            raise UserError(f"{flag} lists a {flag[2:-1]} twice: {list(values)}")
    from resnetlab.models import list_models

    known, shipped = list_models(), list_recipes()
    runs = []
    for model in models:
        if model not in known:
            raise UserError(f"--models: unknown model {model!r}; see `resnetlab models`")
        recipe, extra = exp.recipe_for(model)
        if recipe not in shipped:  # the experiment's recipe family has no such member (cifar10_resnet50)
            can = [m for m in known if exp.recipe_for(m)[0] in shipped]
            raise UserError(f"--models: the {exp.name} experiment cannot run {model} (it has no recipe {recipe}); it "
                            f"runs {', '.join(can)}")
        for label, variant in exp.variants:
            for seed in seeds:
                name = "-".join(p for p in (model, label, f"seed{seed}") if p)
                runs.append(RunSpec(name, recipe, tuple(extra) + tuple(variant) + tuple(overrides), seed))
    return runs


def run_config(spec: RunSpec, data: str | None) -> Config:
    """The run's full config: recipe <- the data folder's kind <- the spec's overrides <- its seed."""
    from resnetlab.engine.datadir import data_overrides

    cfg = load_config(spec.recipe)
    if data:
        cfg = apply_overrides(cfg, data_overrides(data, cfg.data.dataset))
    # model.kwargs from a variant add to the recipe's kwargs instead of replacing them all
    overrides = [(k, {**cfg.model.kwargs, **v}) if k == "model.kwargs" else (k, v) for k, v in spec.overrides]
    return apply_overrides(cfg, overrides + [("train.seed", spec.seed)])


def run_status(run_dir: Path, cfg: Config) -> str:
    """'new', 'done' (finished with this config), 'partial' (interrupted; resumable) or 'conflict'."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return "new"
    try:
        same = load_yaml(saved.read_text(encoding="utf-8")) == config_to_dict(cfg)  # bounded, as recipes are read
    except (yaml.YAMLError, UnicodeDecodeError):  # damaged or edited: not this run's config
        same = False
    if not same:
        return "conflict"
    if (run_dir / "summary.json").is_file():
        return "done"
    return "partial" if (run_dir / "checkpoints" / "last.pt").is_file() else "new"


def run_experiment(runs: list[RunSpec], data: str | None, out, *, stream=None, train_fn=None,
                   experiment: str | None = None) -> list[Path]:
    """Train every run not finished yet, in order; returns the run directories.

    `experiment` (its name) is recorded in `out` before any training, and an `out` recorded for
    another experiment is refused (check_out). Interruption (Ctrl-C, SIGTERM) propagates as the
    engine's TrainingInterrupted after the run saved its checkpoint; calling again with the same
    arguments resumes that run.
    """
    if train_fn is None:
        from resnetlab.engine import train_and_evaluate as train_fn
    stream = stream or sys.stderr
    out = Path(out)
    configs = [(spec, run_config(spec, data)) for spec in runs]  # every config checked before any training
    for spec, cfg in configs:
        if run_status(out / spec.name, cfg) == "conflict":
            raise UserError(f"{out / spec.name} holds a run with a different config.yaml; use another --out "
                            "or remove that directory")
    if experiment is not None:
        check_out(out, experiment, configs[0][1].data if configs else None)
        plan = {"experiment": experiment, "planned": [spec.name for spec, _ in configs]}
        write_text_atomic(out / MARKER, json.dumps(plan) + "\n")
    dirs = []
    for i, (spec, cfg) in enumerate(configs, 1):
        run_dir = out / spec.name
        status = run_status(run_dir, cfg)
        verb = {"done": "already finished, skipping", "partial": "resuming", "new": "training"}[status]
        print(f"[{i}/{len(configs)}] {spec.name}: {verb}", file=stream, flush=True)
        if status != "done":
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            train_fn(cfg, run_dir, resume=status == "partial")
        dirs.append(run_dir)
    return dirs


# ---------------------------------------------------------------- which experiment an --out holds

# {"experiment": NAME, "planned": [run folder names of the last command]}: written before the first run,
# so even a stopped one is known, and a report can name the planned runs never started
MARKER = "experiment.json"


def experiment_run_dirs(out, exp: Experiment) -> list[Path]:
    """Every run folder in `out`, this command's and those of earlier commands (a rerun with other
    --models or --seeds adds to the experiment), in the experiment's order: its models as listed,
    then others; seeds in numeric order."""
    out = Path(out)
    dirs = [p for p in out.iterdir() if (p / "config.yaml").is_file()] if out.is_dir() else []
    order = {model: i for i, model in enumerate(exp.models)}

    def key(path: Path):
        numbers = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]  # seed2 before seed10
        return order.get(path.name.split("-")[0], len(order)), [(isinstance(p, int), p) for p in numbers]

    return sorted(dirs, key=key)


def missing_runs(out) -> list[str]:
    """The runs the last experiment command into `out` planned and never started (no config.yaml yet)."""
    try:
        planned = json.loads((Path(out) / MARKER).read_text())["planned"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a folder from before plans were recorded, or none
    if not isinstance(planned, list):
        return []
    return [name for name in planned if isinstance(name, str) and not (Path(out) / name / "config.yaml").is_file()]


def held_experiment(out) -> str | None:
    """The experiment whose runs and report `out` holds; None for a new folder. One made before the
    marker was written is known by its report's title ("# Experiment NAME: ...", report._markdown)."""
    out = Path(out)
    try:
        return str(json.loads((out / MARKER).read_text())["experiment"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        title = (out / "report.md").read_text().split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return None
    match = re.fullmatch(r"# Experiment (\S+): .*", title)
    return match[1] if match else None


def check_out(out, name: str, data=None) -> None:
    """Refuse, before anything is written, an --out the experiment cannot use: a file; a folder that
    cannot be written; one inside the data (`data`: the runs' DataConfig) where its runs would be read
    as data; one holding another
    experiment (its report.md would be replaced by this one's) or other files and no experiment."""
    from resnetlab.engine.rundir import refuse_other_files, refuse_out_in_data
    from resnetlab.files import check_writable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; an experiment's --out is a folder for its runs and report")
    if data is not None:
        refuse_out_in_data(out, data.root, data.dataset)
    held = held_experiment(out)
    if held not in (None, name):
        raise UserError(f"{out} holds the {held} experiment; choose another --out for {name} (a report is never "
                        "written over one of other runs)")
    refuse_other_files(out, sorted(p.name for p in out.iterdir()) if held is None and out.is_dir() else [], "experiment")
    check_writable(out / MARKER)
