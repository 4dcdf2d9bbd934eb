"""Typed run configuration: one dataclass per concern, loaded from small YAML recipes.

A recipe file holds only the values that differ from these defaults. The resolved config
(every field) is written into each run directory and checkpoint, so a run can always be
repeated from what it saved. Every numeric field declares its allowed range beside its default
(`ranged`, config/ranges.py), and each section is checked when a config is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import resolve
from .ranges import ranged


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
    # Progressive resizing (as fastai's): the training crop side of epochs 1, 2, ... while the list lasts,
    # as a fraction of image_size (rounded: 0.5 of 32 is 16), then image_size itself. Fractions, so a recipe
    # fits any image size. An epoch at fraction f costs about f^2 of a full one. Evaluation always sees
    # image_size; validation is skipped unless the steps since the last one (at most an epoch's) were all
    # at image_size, whose last epochs settle the batch-norm statistics.
    progressive_scales: list = field(default_factory=list)
    # Shorter side before the centre crop (ImageNet-style eval). None (or left out): follows image_size at the
    # ImageNet ratio, 224 of 256, with imagenet/rrc augmentation (else an unused 256): config/geometry.py
    eval_resize: int | None = ranged(None, 1)
    interpolation: str = "bilinear"  # resize filter when decoding files: bilinear | bicubic (published weights')
    # Scale augmentation: shorter side drawn from [scale_min, scale_max]. None: follows image_size as the paper's
    # [256, 480] at 224 (37-69 at 32) with imagenet/rrc augmentation (else an unused 256-480)
    scale_min: int | None = ranged(None, 1)
    scale_max: int | None = ranged(None, 1)
    lighting: float = ranged(0.1, 0.0)  # std of AlexNet-style PCA colour augmentation; 0 disables
    cache_dir: str | None = None  # decoded small-image caches (default: ~/.cache/resnetlab/folders)
    skip_bad: bool = False  # skip unreadable images (with a count) instead of failing
    # Class imbalance: none | sampler (draw training images with class-balanced weights, seeded per
    # epoch) | loss (each sample's cross-entropy, smoothed or not, weighted by n / (classes * count) of its
    # class: sklearn's "balanced"; engine/loss.py).
    balance: str = "none"
    synthetic_size: int = ranged(1024, 1)  # synthetic dataset: images per split
    synthetic_classes: int = ranged(10, 2)
    stats_images: int = ranged(2000, 1)  # folders of large images: normaliser statistics from this many train images

    def __post_init__(self):
        resolve(self)  # the fields that follow image_size, given as None


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
    # resnetlab's own CPU training kernels: batch-norm + ReLU (+ residual) fused (models/fused_bn.py); in bf16
    # on AMX or AVX-512 BF16, the 3x3 convolutions' weight gradients (models/conv_wgrad.py); in fp32 on other
    # AVX-512 CPUs, the 16- and 32-channel 3x3 stride-1 convolutions and the 16->32, 32->64 stride-2 ones,
    # all three passes (models/conv_direct.py).
    # auto = on in eager CPU training.
    fused_bn: str = "auto"  # auto | true | false
    # CPU runs keep the memory a step frees for the next instead of handing it back (no page faults after
    # the first step; peak memory +3-5% measured), backed by 2 MiB pages where Linux allows (engine/heap.py).
    # false: glibc's default.
    hold_heap: bool = True
    seed: int = ranged(0, 0, 2**64 - 1)  # torch generators take 64-bit seeds; numpy refuses negative ones
    workers: int = ranged(0, 0)  # decoding worker processes (folder datasets of large images)
    eval_every: int = ranged(0, 0)  # steps between evaluations; 0 = once per epoch
    # Views of the final test evaluation: center | flip (the centre and its mirror, twice the cost) |
    # 10crop | multiscale (engine/evaluate.py). Validation, run often to pick the best checkpoint, stays center.
    test_protocol: str = "center"
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
    init_normalizer: bool = True  # normalise as the init weights were trained (engine/init_normalizer.py)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
