"""Loading a config: YAML recipes (shipped or files, with their `base:` chains), merging,
SECTION.KEY=VALUE overrides, type checks against the schema, and saving the resolved config."""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import yaml

from resnetlab.errors import UserError, expect_path, expect_type, option
from resnetlab.files import write_text_atomic

from .geometry import released
from .ranges import check_section
from .schema import Config
from .yaml_text import load_yaml

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
RECIPE_META_KEYS = ("base", "description")  # recipe-file keys that are not config fields

# data.val_size (and `data --val-size`) given as 1.0: whole floats are counts, yet it reads as every image
AMBIGUOUS_ONE = "a count of 1 or the fraction 1 (every image)? Write 1 for one image; a fraction must be below 1"


SWITCHES = ("train.channels_last", "train.compile", "train.fused_bn")  # str keys that take true/false
MAX_BASES = 32  # recipe files in one `base:` chain
OVERRIDE_FORMS = "expected 'SECTION.KEY=VALUE' (e.g. 'optim.lr=0.05') or a (key, value) pair"

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
    if not name_or_path.strip():  # else `--recipe ""` would quietly mean the bare defaults
        raise UserError("the recipe name is empty: give a shipped recipe " + option(
            "(resnetlab train --list-recipes) or a YAML file, or leave --recipe out to have one chosen from --data",
            "(resnetlab.config.list_recipes() names them) or a YAML file, or None for the defaults"))
    if "://" in name_or_path:
        raise UserError(f"recipe {name_or_path!r}: recipes are read from files, not URLs; download it first")
    candidates = [Path(name_or_path).expanduser()] if near is None else [near / name_or_path, Path(name_or_path)]
    yaml_suffix = Path(name_or_path).suffix.lower() in (".yaml", ".yml")
    for path in candidates:
        if yaml_suffix and path.is_file():
            return str(path.resolve()), _read_recipe_file(path)
    if yaml_suffix:
        found, stem = next((c for c in candidates if c.exists()), None), Path(name_or_path).stem
        hint = f" (the shipped recipe is named {stem}, without .yaml)" if (recipe_dir() / f"{stem}.yaml").is_file() else ""
        raise UserError(f"recipe {found} is a folder, not a file" if found else
                        f"recipe file not found: {' or '.join(map(str, candidates))}{hint}")
    shipped = recipe_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return f"recipe {name_or_path}", shipped.read_text()
    close = difflib.get_close_matches(name_or_path, list(list_recipes()), n=1, cutoff=0.6)
    raise UserError(
        f"unknown recipe {name_or_path!r}: not a .yaml file and not a shipped recipe"
        f"{f' (did you mean {close[0]}?)' if close else ''}; shipped recipes: {', '.join(list_recipes())}"
    )


def _read_recipe_file(path: Path) -> str:
    """The file's text, decoded as UTF-8 whatever the locale (YAML's own encoding), or a one-line refusal."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None


def _yaml_problem(label: str, err: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the file, where, what (and what it was inside)."""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: YAML text has none
        return f"{label}: not a YAML text file (character #x{err.character:04x} at position {err.position})"
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return f"{label}: not valid YAML: {' '.join(str(err).split())}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    inside = f" ({context} from line {start.line + 1}, column {start.column + 1})" if context and start else ""
    return f"{label}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {err.problem}{inside}"


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
    if len(_chain) >= MAX_BASES:
        raise UserError(f"recipe `base:` chain of over {MAX_BASES} files ({_chain[0]} -> {_chain[1]} -> ...); keep it short")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(_yaml_problem(label, err)) from None
    if data is None:  # it ran the bare defaults: the paper's 64k-step CIFAR recipe
        raise UserError(f"{label} is empty: a recipe sets sections (model:, optim:, ...) or names a base: recipe")
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
            raise UserError(f"config key {key}: expected a number, got {_brief(value)} ({type(value).__name__})")
        if isinstance(value, float) and value == 1.0:  # the one whole float that reads as either
            raise UserError(f"config key {key}=1.0: {AMBIGUOUS_ONE}")
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return float(value)  # YAML spells them .inf/.nan and reads `inf` as a string: the range check names it
    if hint is int and isinstance(value, float) and value.is_integer():  # max_steps: 64e3
        return int(value)
    if hint is str and isinstance(value, bool) and key in SWITCHES:  # YAML reads `true` as a bool: channels_last=true
        return str(value).lower()
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {_brief(value)} "
                    f"({type(value).__name__})")


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def _section_from_dict(cls, data: dict, section: str):
    hints = typing.get_type_hints(cls)
    if data is None:  # `optim:` with every key below it commented out
        raise UserError(f"config section {section}: is empty (are all its keys commented out?); give it keys, "
                        f"or remove the line '{section}:'")
    if not isinstance(data, dict):
        raise UserError(f"config section {section}: expected a mapping of keys, got {_brief(data)}")
    unknown = sorted(set(data) - set(hints), key=str)  # YAML keys may be numbers
    if unknown:
        raise UserError(
            f"unknown config key {section}.{unknown[0]}; valid keys in {section}: {', '.join(hints)}"
        )
    values = cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()})
    check_section(section, values)
    return values


def config_from_dict(data: dict) -> Config:
    """A Config from a nested dict; unknown sections/keys and wrong types are UserErrors."""
    unknown = sorted(set(data) - set(SECTIONS) - set(RECIPE_META_KEYS), key=str)
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
        raise UserError(option(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set optim.lr=0.05",
                               f"override {text!r}: {OVERRIDE_FORMS}"))
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(cfg: Config, overrides) -> Config:
    """A copy of cfg with SECTION.KEY=VALUE strings (or (key, value) pairs) applied, type-checked: a list of
    them, or a dict of key -> value; None for none.

    schedule.epochs, when set, decides the length of a run over schedule.max_steps; so asking for
    max_steps without epochs clears epochs (as --max-steps does), instead of being silently ignored
    by a recipe that counts epochs (cifar10_fast). Given both, the later one decides, as for any
    key given twice (`resnetlab train` refuses both: cli/train.check_run_length). Likewise
    data.eval_resize, where it followed the config's image_size and augmentation and is not among
    these overrides, follows the new ones (config/geometry.py): the same at the end whatever the
    order or grouping of the overrides (evaluation at 256 then cropped to 32 px saw the middle
    eighth of every image)."""
    overrides = list(overrides.items()) if isinstance(overrides, Mapping) else () if overrides is None else overrides
    if isinstance(overrides, (str, bytes)):  # iterated, it would be its characters
        raise UserError(f"overrides are a list of 'SECTION.KEY=VALUE' strings or (key, value) pairs, got one string "
                        f"{overrides!r}: put it in a list")
    unordered = isinstance(overrides, (set, frozenset))  # of two values of a key the later wins: which is later?
    if unordered or not isinstance(overrides, Iterable):
        raise UserError("overrides are a list of 'SECTION.KEY=VALUE' strings or (key, value) pairs, or a dict; got "
                        + ("a set, which has no order" if unordered else type(overrides).__name__))
    data = config_to_dict(cfg)
    keys = set()
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else _pair(item)
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise UserError(f"unknown config section in {key!r}; valid sections: {', '.join(SECTIONS)}")
        data[section][name] = value
        keys.add(key)
        if key == "schedule.max_steps":
            data["schedule"]["epochs"] = None  # until an epochs given after it
    for name in released(cfg.data, keys):
        data["data"][name] = None  # resolved from the new image_size and augmentation
    return config_from_dict(data)


def _pair(item) -> tuple[str, object]:
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    raise UserError(f"override {_brief(item)}: {OVERRIDE_FORMS}")


def load_config(recipe: str | os.PathLike | None = None, overrides=()) -> Config:
    """Defaults <- recipe (shipped name or YAML path, a str or pathlib.Path, with its `base:` chain) <- overrides
    (apply_overrides: a list of 'SECTION.KEY=VALUE' strings or (key, value) pairs, or a dict)."""
    if isinstance(recipe, os.PathLike):
        recipe = str(expect_path(recipe, "recipe"))
    elif recipe is not None:
        expect_type(recipe, str, "recipe must be a shipped recipe name or a YAML file (a str or pathlib.Path)")
    cfg = config_from_dict(read_recipe(recipe)) if recipe is not None else Config()
    return apply_overrides(cfg, overrides)


def checked_config(cfg, what: str) -> Config:
    """`cfg` as a recipe would give it: every section of its type, every value of its key's type and range (a
    Config built in Python, Config(model="resnet20"), failed deep in a run). Anything else is refused by `what`."""
    expect_type(cfg, Config, what)
    for name, kind in typing.get_type_hints(Config).items():
        expect_type(getattr(cfg, name), kind, f"Config's {name} must be a resnetlab.config.{kind.__name__}")
    return apply_overrides(cfg, ())


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path) -> None:
    write_text_atomic(path, config_to_yaml(cfg))
