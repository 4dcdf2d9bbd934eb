"""Typed run configuration: one dataclass per concern, loaded from small YAML recipes.

A recipe file holds only the values that differ from these defaults. The resolved config
(every field) is written into each run directory and checkpoint, so a run can always be
repeated from what it saved. Every numeric field declares its allowed range beside its default
(`ranged`), and each section is checked when a config is loaded, so a wrong value is one line
naming the key before anything is built.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from resnetlab.errors import UserError
from resnetlab.files import write_text_atomic


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field; None leaves that side unbounded. Floats must be finite."""

    low: float
    high: float | None = None
    open_low: bool = False  # low itself is not allowed
    open_high: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low or (value == self.low and not self.open_low)
        below = self.high is None or value < self.high or (value == self.high and not self.open_high)
        return above and below

    def __str__(self) -> str:
        low, high = (int(b) if isinstance(b, float) and b.is_integer() else b for b in (self.low, self.high))
        if high is None:
            return f"{'>' if self.open_low else '>='} {low}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


def ranged(default, low, high=None, *, open_low: bool = False, open_high: bool = False):
    """A numeric field: its default and its allowed range (None, where the type allows it, is always allowed)."""
    return field(default=default, metadata={"range": Range(low, high, open_low, open_high)})


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
    # Held out of train for model selection: a count (paper: 45k/5k, drawn at random over the split) or a
    # fraction in (0, 1) (0.2: a fifth of every class, stratified); 0 = none. Seeded by train.seed.
    val_size: int | float = ranged(5000, 0)
    # What ROOT/val/ is when there is no ROOT/test/: val (the validation split, as ImageFolder users
    # expect) or test (ImageNet, whose labelled val/ is its only test set: validation is then held out of train).
    val_folder: str = "val"
    # Train on this many of the remaining training images (class-balanced, chosen by the seed);
    # None = all. For short experiments: a subset seen for many epochs reaches the regime where
    # training error reflects how well a net optimises, not how fast it starts.
    train_size: int | None = ranged(None, 1)
    augment: str = "cifar"  # cifar (pad 4 + crop + flip) | imagenet (scale aug) | rrc | none
    normalize: str = "pixel"  # pixel (per-pixel mean, the paper) | channel (mean/std)
    image_size: int = ranged(32, 1)  # training crop size: 32 for CIFAR, 224 for ImageNet
    eval_resize: int = ranged(256, 1)  # shorter side before the centre crop (ImageNet-style eval)
    interpolation: str = "bilinear"  # resize filter when decoding files: bilinear | bicubic (published weights')
    scale_min: int = ranged(256, 1)  # scale augmentation: shorter side drawn from [scale_min, scale_max]
    scale_max: int = ranged(480, 1)
    lighting: float = ranged(0.1, 0.0)  # std of AlexNet-style PCA colour augmentation; 0 disables
    cache_dir: str | None = None  # decoded small-image caches (default: ~/.cache/resnetlab/folders)
    skip_bad: bool = False  # skip unreadable images (with a count) instead of failing
    # Class imbalance: none | sampler (draw training images with class-balanced weights, seeded per
    # epoch) | loss (cross-entropy weighted by n / (classes * count), sklearn's "balanced").
    balance: str = "none"
    synthetic_size: int = ranged(1024, 1)  # synthetic dataset: images per split
    synthetic_classes: int = ranged(10, 2)
    stats_images: int = ranged(2000, 1)  # folders of large images: normaliser statistics from this many train images


@dataclass
class OptimConfig:
    lr: float = ranged(0.1, 0.0)
    momentum: float = ranged(0.9, 0.0, 1.0, open_high=True)
    weight_decay: float = ranged(1e-4, 0.0)
    nesterov: bool = False
    label_smoothing: float = ranged(0.0, 0.0, 1.0, open_high=True)  # 1 would make every target uniform
    batch_size: int = ranged(128, 1)  # global batch (summed over all processes)


@dataclass
class ScheduleConfig:
    kind: str = "step"  # step | cosine | onecycle | plateau
    max_steps: int = ranged(64000, 1)  # total optimizer steps (the paper counts iterations)
    epochs: int | None = ranged(None, 1)  # if set, overrides max_steps as epochs * steps_per_epoch
    milestones: list = field(default_factory=lambda: [32000, 48000])  # step kind: lr *= gamma here
    milestones_unit: str = "steps"  # steps | epochs
    gamma: float = ranged(0.1, 0.0, 1.0, open_low=True)  # a decay: 10 is a typo for 0.1
    patience: int = ranged(5, 0)  # plateau kind: evaluations without a better val error before lr *= gamma
    warmup_steps: int = ranged(0, 0)  # linear warmup from warmup_lr to lr
    warmup_lr: float = ranged(0.0, 0.0)
    # Paper's ResNet-110 trick: hold lr at warmup_lr until training error < this (then lr).
    warmup_until_err: float | None = ranged(None, 0.0, 100.0, open_low=True)  # percent
    final_lr_frac: float = ranged(0.0, 0.0, 1.0)  # cosine / onecycle end at lr * final_lr_frac


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto | true | false
    compile: str = "auto"  # auto (= false, measured) | true | false | a torch.compile mode
    seed: int = ranged(0, 0, 2**64 - 1)  # torch generators take 64-bit seeds; numpy refuses negative ones
    workers: int = ranged(0, 0)  # decoding worker processes (folder datasets of large images)
    eval_every: int = ranged(0, 0)  # steps between evaluations; 0 = once per epoch
    # Time-to-accuracy runs: stop at the first evaluation whose validation top-1 (%) reaches this.
    stop_at_val_top1: float | None = ranged(None, 0.0, 100.0, open_low=True)
    log_every: int = ranged(50, 1)
    sync_bn: bool = False
    tensorboard: bool = False


@dataclass
class FinetuneConfig:
    init: str | None = None  # weights to start from (anything load_weights accepts)
    freeze_stages: int = ranged(-1, -1)  # -1 nothing; 0 the stem; k the stem and the first k stages
    backbone_lr_mult: float = ranged(1.0, 0.0)  # backbone learning rate = lr * this
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
BALANCE = ("none", "sampler", "loss")  # data.balance


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3, 1e6 and 5.0e4 as floats: YAML 1.1 (PyYAML) wants a dot
    and a signed exponent and would keep them as strings; YAML 1.2 and every user reads numbers."""


_YamlLoader.add_implicit_resolver(  # after PyYAML's own resolvers, so plain ints stay ints
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """YAML text -> Python values, as recipes and --set values are read (safe, floats as users write them)."""
    return yaml.load(text, Loader=_YamlLoader)


def recipe_dir():
    """The folder of the recipes shipped inside the package."""
    return resources.files("resnetlab") / "recipes"


def list_recipes() -> dict[str, str]:
    """Shipped recipe names -> their one-line description."""
    out = {}
    for entry in sorted(recipe_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = load_yaml(entry.read_text()) or {}
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
        data = load_yaml(text) or {}
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
    if set(args) == {int, float}:  # a count or a fraction (data.val_size): whole floats are counts
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key {key}: expected a number, got {value!r} ({type(value).__name__})")
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():  # max_steps: 64e3
        return int(value)
    if hint is str and isinstance(value, bool):  # YAML reads `true` as a bool: channels_last=true
        return str(value).lower()
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")


def check_section(section: str, values) -> None:
    """One config section: every numeric field inside its declared range, then the rules that
    tie fields together. Run on every load, so the engine never sees an out-of-range value."""
    for f in dataclasses.fields(values):
        allowed, value = f.metadata.get("range"), getattr(values, f.name)
        if allowed is not None and value is not None and value not in allowed:
            kind = "an integer" if isinstance(value, int) else "a finite number"
            raise UserError(f"config key {section}.{f.name}={value!r} is out of range: expected {kind} {allowed}")
    if section == "data":
        _check_data(values)
    if section == "optim" and values.nesterov and values.momentum == 0:
        raise UserError("config key optim.nesterov=true needs optim.momentum > 0")
    if section == "schedule":
        if values.milestones_unit not in ("steps", "epochs"):
            raise UserError(f"config key schedule.milestones_unit={values.milestones_unit!r}: expected steps or epochs")
        bad = [m for m in values.milestones if isinstance(m, bool) or not isinstance(m, (int, float)) or m not in Range(0)]
        if bad:
            raise UserError(f"config key schedule.milestones={values.milestones!r}: expected a list of numbers >= 0 "
                            f"(in {values.milestones_unit}), got {bad[0]!r}")


def _check_data(values) -> None:
    if values.scale_min > values.scale_max:
        raise UserError(f"config keys data.scale_min={values.scale_min} > data.scale_max={values.scale_max}: "
                        "scale augmentation draws the shorter side from [scale_min, scale_max]")
    if isinstance(values.val_size, float) and not 0 < values.val_size < 1:
        raise UserError(f"config key data.val_size={values.val_size!r}: a fraction must be in (0, 1) (0.2 holds out "
                        "a fifth of every class); a count is a whole number")
    for key, allowed in (("balance", BALANCE), ("val_folder", ("val", "test"))):
        if getattr(values, key) not in allowed:
            raise UserError(f"config key data.{key}={getattr(values, key)!r}: expected one of {', '.join(allowed)}")


def _section_from_dict(cls, data: dict, section: str):
    hints = typing.get_type_hints(cls)
    if not isinstance(data, dict):
        raise UserError(f"config section {section}: expected a mapping of keys, got {data!r}")
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(
            f"unknown config key {section}.{unknown[0]}; valid keys in {section}: {', '.join(hints)}"
        )
    values = cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()})
    check_section(section, values)
    return values


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
        value = load_yaml(raw) if raw.strip() else ""
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
