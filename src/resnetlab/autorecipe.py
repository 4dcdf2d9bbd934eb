"""The recipe for `resnetlab train --data DIR --out RUN` without --recipe, chosen from the data and the machine.

`choose(data, machine, given)` is a pure function of a few facts (`DataFacts`, gathered by
`resnetlab.data.survey`; `MachineFacts.detect()`) and the values the user set (`given`, never
overridden). It returns the recipe name, the overrides it adds and one line saying what it chose
and how to change it; the run's config.yaml then holds the resolved values.

- CIFAR-sized images (every probed image <= 64 px) -> `cifar10_fast` at their own size; on
  CIFAR-10 itself that is the quick-start recipe unchanged.
- Larger photos -> `finetune` from torchvision's ImageNet ResNet-18 (IMAGENET_WEIGHTS), or with
  finetune.init=null (`--init none`) `photos_scratch`, sized to the data:
  * image size: 224 px (the weights' own), or for smaller photos their median shorter side rounded
    down to a multiple of 32 (at least 64): upsampling adds no detail and costs (224/side)^2 compute;
    at most 128 from scratch, where a few hundred photos cannot use more.
  * validation: the recipe's count when it is at most a fifth of the images, else a stratified 20%;
    none held out when the folder has val/.
  * batch: the recipe's, halved until an epoch has at least MIN_STEPS_PER_EPOCH steps, with the lr
    scaled by the same factor (linear scaling, Goyal et al. 2017, arXiv 1706.02677).
  * epochs: the recipe's, raised until the run has MIN_TOTAL_STEPS steps (at most MAX_EPOCH_FACTOR x).
  * warm-up: at most a quarter of the run (cifar10_fast's 250 of 1225 steps on CIFAR-10 stays).
  * decoding workers: at most the recipe's, never more than the cores: half of them on a CPU-only
    machine (the others run the model), all but one with a GPU.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from resnetlab.config import apply_overrides, load_config
from resnetlab.config.geometry import CROP_RATIO
from resnetlab.errors import count

IMAGENET_WEIGHTS = "resnet18.tv_in1k"  # torchvision's ResNet-18 (69.76% ImageNet top-1), 224 px, bilinear
SMALL_RECIPE, FINETUNE_RECIPE, SCRATCH_RECIPE = "cifar10_fast", "finetune", "photos_scratch"
MIN_STEPS_PER_EPOCH = 4
MIN_TOTAL_STEPS = 300
MAX_EPOCH_FACTOR = 4
MAX_WARMUP_SHARE = 0.25
VAL_FRACTION = 0.2
PRETRAINED_SIZE, MIN_SIZE, SCRATCH_MAX_SIZE = 224, 64, 128


@dataclass(frozen=True)
class DataFacts:
    dataset: str  # cifar10 | cifar100 | folder
    train_images: int  # in the training split, before any validation hold-out
    num_classes: int
    has_val: bool  # a validation split of its own (ROOT/val/): nothing is held out of train
    short_side: int  # median shorter side of the (probed) training images, px
    small: bool  # decoded into memory like CIFAR (every probed image <= 64 px)
    largest_class: int | None = None  # training images of the biggest class (None: not counted)

    def describe(self) -> str:
        kind = f"{self.dataset} image" if self.dataset != "folder" else ("small image" if self.small else "photo")
        return f"{count(self.train_images, kind)} in {count(self.num_classes, 'class')} (shorter side ~{self.short_side} px)"


@dataclass(frozen=True)
class MachineFacts:
    cpus: int  # cores this process may use
    gpu: bool

    @classmethod
    def detect(cls) -> "MachineFacts":
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cls(cpus, torch.cuda.is_available())


@dataclass(frozen=True)
class InitModel:
    name: str  # the model the --init weights are of
    small: bool  # a net of small images (the CIFAR family), trained as cifar10_fast trains
    kwargs: tuple = ()  # (key, value) pairs it was built with (stride_on, shortcut ...): the run builds it alike


@dataclass(frozen=True)
class AutoRecipe:
    recipe: str
    overrides: tuple[tuple[str, object], ...]  # what the choice adds to the recipe (never a key in `given`)
    line: str  # what was chosen and how to change it

    @property
    def init(self) -> str | None:
        return dict(self.overrides).get("finetune.init")


def shorter_scales(scales, epochs: int) -> list[float]:
    """The recipe's progressive crop scales for a run of `epochs` epochs that the list does not fit:
    the same ramp over all but the last epoch, which trains (and is validated) at the full size."""
    return [scales[i * len(scales) // (epochs - 1)] for i in range(epochs - 1)] if epochs > 1 else []


def choose(data: DataFacts, machine: MachineFacts, given: dict | None = None, init_model: InitModel | None = None
           ) -> AutoRecipe:
    """The recipe and overrides for `data` on `machine`; `given` maps config keys the user set
    (flags, --set) to their values: they are kept, and the derived values follow them. `init_model`: the
    model the --init weights are of, where that can be told (cli/train_auto.py): the run trains that model."""
    given = dict(given or {})
    init = given.get("finetune.init", None if data.small else IMAGENET_WEIGHTS)
    # Weights given for small images are fine-tuned as a photo folder's are (ImageNet nets want their
    # mean/std, a new classifier, a gentler backbone lr), unless they are a net of small images themselves
    # (a run of this very recipe, say, from --init RUN after its data changed): that goes on as it trained.
    small_init = init_model is not None and init_model.small
    recipe = (SMALL_RECIPE if data.small and (not init or small_init) else FINETUNE_RECIPE if init
              else SCRATCH_RECIPE)
    base = load_config(recipe)
    given = checked(base, given)
    chosen: dict[str, object] = {}

    def pick(key: str, value):
        """The user's value for key if given, else `value` (recorded as an override when it differs)."""
        if key in given:
            return given[key]
        section, name = key.split(".")
        if value != getattr(getattr(base, section), name):
            chosen[key] = value
        return value

    if init:
        pick("finetune.init", init)
    if init and init_model is not None:
        pick("model.name", init_model.name)
        pick("model.kwargs", dict(init_model.kwargs))
    size = pick("data.image_size", image_size(data, scratch=not init or small_init))
    if recipe != SMALL_RECIPE:
        pick("data.eval_resize", round(size / CROP_RATIO))
    val_size = base.data.val_size
    if not data.has_val and not (isinstance(val_size, int) and val_size <= data.train_images * VAL_FRACTION):
        val_size = VAL_FRACTION
    elif not data.has_val and data.dataset == "folder" and isinstance(val_size, int) and val_size:
        # A count is drawn over all classes at once (CIFAR's 45k/5k): a rare class of a user's folder could lose
        # every image to validation. The same share of each class instead (stratified), as the 20% is.
        val_size = share_of(val_size, data.train_images)
    # A class's last image is never held out (data.sampling.stratified_split): with one image per class
    # nothing could be, and the run would stop on it; train without a validation split instead.
    single = not data.has_val and data.largest_class is not None and data.largest_class <= 1
    val_size = pick("data.val_size", 0 if single else val_size)
    fit = data.train_images if data.has_val else data.train_images - held_out(data.train_images, val_size)
    batch = pick("optim.batch_size", fitting_batch(base.optim.batch_size, fit))
    scale = batch / base.optim.batch_size
    lr = pick("optim.lr", base.optim.lr * scale)
    pick("schedule.warmup_lr", base.schedule.warmup_lr * scale)
    steps = max(fit // batch, 1)
    if given.get("schedule.max_steps") is not None and given.get("schedule.epochs") is None:  # as apply_overrides
        epochs, total = None, given["schedule.max_steps"]
    else:
        epochs = pick("schedule.epochs", run_epochs(base.schedule.epochs, steps))
        total = epochs * steps
    warmup = pick("schedule.warmup_steps", min(base.schedule.warmup_steps, int(total * MAX_WARMUP_SHARE)))
    scales = base.data.progressive_scales
    if scales and len(scales) >= -(-total // steps):  # a run shorter than the recipe's small-crop epochs
        pick("data.progressive_scales", shorter_scales(scales, -(-total // steps)))
    workers = base.train.workers if recipe == SMALL_RECIPE else pick("train.workers", decode_workers(base.train.workers, machine))
    where = ("a val/ folder" if data.has_val else f"{val_size * 100:.3g}% of each class held out" if isinstance(val_size, float)
             else f"{count(val_size, 'image')} held out" if val_size else "none (a single image per class: nothing to hold out)")
    start = f"fine-tuning {init}" if init else "from scratch"
    length = f"{count(epochs, 'epoch')} of {count(steps, 'step')}" if epochs else count(total, "step")
    decoding = "decoded once into memory" if data.small else count(workers, "decoding worker")
    if given.get("finetune.linear_probe"):  # no batches, lr, epochs or warm-up: one fit on features computed once
        line = (f"no --recipe given: {data.describe()} -> recipe {recipe} as a linear probe: a logistic regression on "
                f"the frozen features of {init if init else 'a randomly initialised backbone'} at {size} px, computed "
                f"once, its L2 penalty chosen on {where}. Change any of it with --recipe NAME or --set KEY=VALUE; the "
                "run's config.yaml holds every value")
        return AutoRecipe(recipe, tuple(chosen.items()), line)
    line = (f"no --recipe given: {data.describe()} -> recipe {recipe}, {start} at {size} px, batch {batch} "
            f"(lr {lr:g}), {length}, warm-up {count(warmup, 'step')}, validation on {where}, {decoding}. "
            "Change any of it with --recipe NAME or --set KEY=VALUE (e.g. "
            f"--batch-size, --epochs{', --init none to train from scratch' if init else ''}); "
            "the run's config.yaml holds every value")
    return AutoRecipe(recipe, tuple(chosen.items()), line)


def checked(base, given: dict) -> dict:
    """`given` typed and range-checked by the config itself, against the recipe it joins: a wrong
    value is its one-line UserError before anything is computed from it or said about it; a whole
    float read as a count (data.val_size=5e3 is 5000 images) is used as the run will use it."""
    cfg = apply_overrides(base, given.items())
    return {key: getattr(getattr(cfg, key.partition(".")[0]), key.partition(".")[2]) for key in given}


def image_size(data: DataFacts, scratch: bool) -> int:
    if data.small and scratch:
        return data.short_side  # CIFAR's 32 stays 32; 64 px images are not shrunk
    # pretrained nets downsample 32x: 32 px images are upscaled to 64 (a 2x2 last map, not 1x1)
    size = max(MIN_SIZE, min(PRETRAINED_SIZE, data.short_side // 32 * 32))
    return min(size, SCRATCH_MAX_SIZE) if scratch else size


def held_out(n: int, val_size: int | float) -> int:
    """Images data.val_size holds out of n (a fraction rounds as data.sampling.stratified_split does)."""
    return int(val_size * n + 0.5) if isinstance(val_size, float) else min(val_size, n)


def share_of(count: int, n: int) -> float:
    """The shortest decimal fraction of n images that holds out exactly `count` of them (5000 of 30,000:
    0.16667; three digits, 0.167, held out 5,010)."""
    for digits in range(3, 18):
        share = float(f"{count / n:.{digits}g}")
        if held_out(n, share) == count:
            return share
    return count / n


def fitting_batch(batch: int, images: int) -> int:
    """`batch` halved until an epoch of `images` has at least MIN_STEPS_PER_EPOCH steps (at least 1)."""
    while batch > 1 and images // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def run_epochs(epochs: int, steps_per_epoch: int) -> int:
    """The recipe's epochs, raised until the run has MIN_TOTAL_STEPS steps, at most MAX_EPOCH_FACTOR x."""
    return max(epochs, min(math.ceil(MIN_TOTAL_STEPS / steps_per_epoch), MAX_EPOCH_FACTOR * epochs))


def decode_workers(recipe_workers: int, machine: MachineFacts) -> int:
    return min(recipe_workers, machine.cpus - 1 if machine.gpu else machine.cpus // 2)
