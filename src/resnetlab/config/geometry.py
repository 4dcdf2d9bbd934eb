"""The data geometry that follows data.image_size: data.eval_resize (the shorter side evaluation
resizes to before its centre crop) and the scale augmentation's range [data.scale_min,
data.scale_max] (the paper's [256, 480] at 224), resolved in one place, whatever the order or grouping of the
overrides that set the size and the augmentation.

A DataConfig given none of them (a recipe without it, `null`) takes the ImageNet ratio of its image_size
(224 of 256; 224 of [256, 480]) where evaluation resizes (imagenet/rrc augmentation), else the unused 256, 256, 480.
`apply_overrides` hands a value that followed the config's old size and augmentation back to
that rule, so it follows the new ones; a value given (in the same overrides, or a recipe's at
another ratio) is kept, and one that crops too little of the image is refused or warned about."""
from __future__ import annotations

CROP_RATIO = 224 / 256  # centre crop / resized shorter side at evaluation, as for ImageNet
SCALED = ("imagenet", "rrc")  # augmentations whose evaluation resizes to eval_resize, then crops
UNSCALED = {"eval_resize": 256, "scale_min": 256, "scale_max": 480}  # cifar/none: unused, the historical values
SCALE_MAX_RATIO = 480 / 224  # the paper's scale augmentation: shorter side in [256, 480] for 224 crops
FOLLOWING = tuple(UNSCALED)  # the DataConfig fields resolved here
SMALL_SHARE = 0.5  # an evaluation (or largest training) crop under this share of the shorter side: warned


def derived(key: str, size, augment) -> int:
    """The value of `key` that follows image_size `size` under `augment`."""
    if augment not in SCALED or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return UNSCALED[key]
    return max(size, round(size * SCALE_MAX_RATIO if key == "scale_max" else size / CROP_RATIO))


def resolve(data) -> None:
    """Fill in the following fields a DataConfig was given as None (DataConfig.__post_init__)."""
    for key in FOLLOWING:
        if getattr(data, key) is None:
            setattr(data, key, derived(key, data.image_size, data.augment))


def released(data, given: set) -> list[str]:
    """The following fields of `data` not among the keys `given` ("data.eval_resize") that hold
    the value derived from data's own size and augmentation: they follow the new ones."""
    return [key for key in FOLLOWING if f"data.{key}" not in given
            and getattr(data, key) == derived(key, data.image_size, data.augment)]


def check_geometry(data, warn: bool = True) -> None:
    """Refuse (UserError) or warn (where `warn`: one process of several) about the evaluation geometry of a
    run's data config."""
    import warnings

    from resnetlab.errors import ResnetlabWarning

    note = geometry_note(data)
    if note and warn:
        warnings.warn(note, ResnetlabWarning, stacklevel=3)


def geometry_note(data) -> str | None:
    """A one-line warning for an evaluation crop that covers little of the image; an eval_resize
    below image_size (a crop larger than the resized image) is refused."""
    from resnetlab.errors import UserError

    if data.augment not in SCALED:
        return None
    size, side = data.image_size, data.eval_resize
    if side < size:
        raise UserError(f"config key data.eval_resize={side} is below data.image_size={size}: evaluation resizes "
                        f"the shorter side to eval_resize, then cuts the centre image_size crop; use at least {size} "
                        f"({derived('eval_resize', size, data.augment)} is the ImageNet ratio), or null to follow")
    low, high = data.scale_min, data.scale_max
    if data.augment == "imagenet" and size / low < SMALL_SHARE:
        return (f"data.scale_min={low}, data.scale_max={high} for data.image_size={size}: training crops cover "
                f"{size / high:.0%}-{size / low:.0%} of each image's shorter side (the paper's 47-88%: "
                f"{derived('scale_min', size, 'imagenet')}-{derived('scale_max', size, 'imagenet')}); set them to "
                "null to follow image_size")
    if size / side < SMALL_SHARE:
        return (f"data.eval_resize={side} for data.image_size={size}: evaluation's centre crop covers "
                f"{size / side:.0%} of each image's shorter side (the ImageNet ratio: 88%, eval_resize "
                f"{derived('eval_resize', size, data.augment)}); set data.eval_resize=null to follow image_size")
    return None
