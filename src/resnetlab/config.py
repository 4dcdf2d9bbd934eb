"""Typed run configuration: one dataclass per concern, loaded from small YAML recipes.

A recipe file holds only the values that differ from these defaults. The resolved config
(every field) is written into each run directory and checkpoint, so a run can always be
repeated from what it saved.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from resnetlab.errors import UserError
from resnetlab.files import write_text_atomic


@dataclass
class ModelConfig:
    name: str = "resnet20"
    # Extra keyword arguments for the model builder (shortcut="B", zero_init_residual=True, ...).
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | folder | synthetic
    root: str | None = None  # data directory (the CLI's --data)
    download: bool = False  # CIFAR only: fetch the official archive if missing
    val_size: int = 5000  # images held out of train for model selection (paper: 45k/5k); 0 = none
    # Train on this many of the remaining training images (class-balanced, chosen by the seed);
    # None = all. For short experiments: a subset seen for many epochs reaches the regime where
    # training error reflects how well a net optimises, not how fast it starts.
    train_size: int | None = None
    augment: str = "cifar"  # cifar (pad 4 + crop + flip) | imagenet (scale aug) | rrc | none
    normalize: str = "pixel"  # pixel (per-pixel mean, the paper) | channel (mean/std)
    image_size: int = 32  # training crop size: 32 for CIFAR, 224 for ImageNet
    eval_resize: int = 256  # shorter side before the centre crop (ImageNet-style eval)
    interpolation: str = "bilinear"  # resize filter when decoding files: bilinear | bicubic (published weights')
    scale_min: int = 256  # scale augmentation: shorter side drawn from [scale_min, scale_max]
    scale_max: int = 480
    lighting: float = 0.1  # std of AlexNet-style PCA colour augmentation; 0 disables
    cache_dir: str | None = None  # decoded small-image caches (default: ~/.cache/resnetlab/folders)
    skip_bad: bool = False  # skip unreadable images (with a count) instead of failing
    synthetic_size: int = 1024  # synthetic dataset: images per split
    synthetic_classes: int = 10
    stats_images: int = 2000  # folders of large images: normaliser statistics from this many train images


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    batch_size: int = 128  # global batch (summed over all processes)


@dataclass
class ScheduleConfig:
    kind: str = "step"  # step | cosine | onecycle | plateau
    max_steps: int = 64000  # total optimizer steps (the paper counts iterations)
    epochs: int | None = None  # if set, overrides max_steps as epochs * steps_per_epoch
    milestones: list = field(default_factory=lambda: [32000, 48000])  # step kind: lr *= gamma here
    milestones_unit: str = "steps"  # steps | epochs
    gamma: float = 0.1
    patience: int = 5  # plateau kind: evaluations without a better val error before lr *= gamma
    warmup_steps: int = 0  # linear warmup from warmup_lr to lr
    warmup_lr: float = 0.0
    # Paper's ResNet-110 trick: hold lr at warmup_lr until training error < this (then lr).
    warmup_until_err: float | None = None
    final_lr_frac: float = 0.0  # cosine / onecycle end at lr * final_lr_frac


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto | true | false
    compile: str = "auto"  # auto (= false, measured) | true | false | a torch.compile mode
    seed: int = 0
    workers: int = 0  # decoding worker processes (folder datasets of large images)
    eval_every: int = 0  # steps between evaluations; 0 = once per epoch
    # Time-to-accuracy runs: stop at the first evaluation whose validation top-1 (%) reaches this.
    stop_at_val_top1: float | None = None
    log_every: int = 50
    sync_bn: bool = False
    tensorboard: bool = False


@dataclass
class FinetuneConfig:
    init: str | None = None  # weights to start from (anything load_weights accepts)
    freeze_stages: int = -1  # -1 nothing; 0 the stem; k the stem and the first k stages
    backbone_lr_mult: float = 1.0  # backbone learning rate = lr * this
    freeze_bn: bool = False  # keep BatchNorm running statistics (and affine) fixed
    linear_probe: bool = False  # frozen backbone, features computed once, train the classifier


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


# ---------------------------------------------------------------- loading and saving

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
RECIPE_META_KEYS = ("base", "description")  # recipe-file keys that are not config fields


def recipe_dir():
    """The folder of the recipes shipped inside the package."""
    return resources.files("resnetlab") / "recipes"


def list_recipes() -> dict[str, str]:
    """Shipped recipe names -> their one-line description."""
    out = {}
    for entry in sorted(recipe_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(data.get("description", ""))
    return out


def _recipe_source(name_or_path: str, near: Path | None):
    """A recipe given by file path (tried next to `near` first) or shipped name -> (label, text)."""
    candidates = [Path(name_or_path)] if near is None else [near / name_or_path, Path(name_or_path)]
    for path in candidates:
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return str(path.resolve()), path.read_text()
    if Path(name_or_path).suffix in (".yaml", ".yml"):
        raise UserError(f"recipe file not found: {' or '.join(map(str, candidates))}")
    shipped = recipe_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return f"recipe {name_or_path}", shipped.read_text()
    raise UserError(
        f"unknown recipe {name_or_path!r}: not a .yaml file and not a shipped recipe; "
        f"shipped recipes: {', '.join(list_recipes())}"
    )


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: sections merge key by key, a value in `over` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key in SECTIONS:
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def read_recipe(name_or_path: str, near: Path | None = None, _chain: tuple = ()) -> dict:
    """The recipe's nested dict with its `base:` chain merged in (base first, then this file).

    A `base:` that is a file path is looked up next to the file that names it.
    """
    label, text = _recipe_source(name_or_path, near)
    if label in _chain:
        raise UserError(f"recipe `base:` chain loops: {' -> '.join(_chain + (label,))}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{label}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: a recipe must be a mapping of sections (model:, optim:, ...)")
    base = data.pop("base", None)
    data.pop("description", None)
    if base is None:
        return data
    here = Path(label).parent if Path(label).is_file() else None
    return _merge(read_recipe(str(base), here, _chain + (label,)), data)


def _coerce(value, hint, key: str):
    """Check (and where lossless, convert) a value against a field's declared type."""
    args = typing.get_args(hint)
    if args and type(None) in args:  # `X | None`
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, bool):  # YAML reads `true` as a bool: channels_last=true
        return str(value).lower()
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")


def _section_from_dict(cls, data: dict, section: str):
    hints = typing.get_type_hints(cls)
    if not isinstance(data, dict):
        raise UserError(f"config section {section}: expected a mapping of keys, got {data!r}")
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(
            f"unknown config key {section}.{unknown[0]}; valid keys in {section}: {', '.join(hints)}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()})


def config_from_dict(data: dict) -> Config:
    """A Config from a nested dict; unknown sections/keys and wrong types are UserErrors."""
    unknown = sorted(set(data) - set(SECTIONS) - set(RECIPE_META_KEYS))
    if unknown:
        raise UserError(f"unknown config section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(Config)
    return Config(**{s: _section_from_dict(hints[s], data[s], s) for s in SECTIONS if s in data})


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[str, object]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML (1e-4, true, [1, 2], null)."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise UserError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(cfg: Config, overrides) -> Config:
    """A copy of cfg with SECTION.KEY=VALUE strings (or (key, value) pairs) applied, type-checked."""
    data = config_to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise UserError(f"unknown config section in {key!r}; valid sections: {', '.join(SECTIONS)}")
        data[section][name] = value
    return config_from_dict(data)


def load_config(recipe: str | None = None, overrides=()) -> Config:
    """Defaults <- recipe (shipped name or YAML path, with its `base:` chain) <- overrides."""
    cfg = config_from_dict(read_recipe(recipe)) if recipe else Config()
    return apply_overrides(cfg, overrides)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path) -> None:
    write_text_atomic(path, config_to_yaml(cfg))
