"""The allowed values of config fields: numeric ranges declared beside each default (`ranged`),
and the checks run on every section when a config is loaded, so a wrong value is one line naming
the key before anything is built."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from resnetlab.errors import UserError

BALANCE = ("none", "sampler", "loss")  # data.balance
PROTOCOLS = ("center", "flip", "10crop", "multiscale")  # testing protocols (train.test_protocol); views: data/batches.py


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
    if section == "train":
        if values.test_protocol not in PROTOCOLS:
            raise UserError(f"config key train.test_protocol={values.test_protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if section == "finetune" and isinstance(values.init, str) and not values.init.strip():
        # `--init "$WEIGHTS"` with the variable unset trained from random weights without a word
        raise UserError("config key finetune.init is empty (an unset variable?): give weights, a checkpoint or a run "
                        "directory, or leave it out (null) to start from random weights")
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
    bad = [f for f in values.progressive_scales if isinstance(f, bool) or not isinstance(f, (int, float)) or f not in Range(0, 1, True)]
    if bad:
        raise UserError(f"config key data.progressive_scales={values.progressive_scales!r}: expected a list of fractions "
                        f"of data.image_size in (0, 1], one per epoch from the first; got {bad[0]!r}")
    for key, allowed in (("balance", BALANCE), ("val_folder", ("val", "test"))):
        if getattr(values, key) not in allowed:
            raise UserError(f"config key data.{key}={getattr(values, key)!r}: expected one of {', '.join(allowed)}")
