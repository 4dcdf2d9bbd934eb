"""Typed run configuration: one dataclass per concern, loaded from small YAML recipes.

A recipe file holds only the values that differ from these defaults. The resolved config
(every field) is written into each run directory and checkpoint, so a run can always be
repeated from what it saved.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
    augment: str = "cifar"  # cifar (pad 4 + crop + flip) | imagenet (scale aug) | rrc | none
    normalize: str = "pixel"  # pixel (per-pixel mean, the paper) | channel (mean/std)
    image_size: int = 32  # training crop size: 32 for CIFAR, 224 for ImageNet
    eval_resize: int = 256  # shorter side before the centre crop (ImageNet-style eval)
    scale_min: int = 256  # scale augmentation: shorter side drawn from [scale_min, scale_max]
    scale_max: int = 480
    lighting: float = 0.1  # std of AlexNet-style PCA colour augmentation; 0 disables
    cache_dir: str | None = None  # where decoded small-image caches live (default: next to data)
    skip_bad: bool = False  # skip unreadable images (with a count) instead of failing
    synthetic_size: int = 1024  # synthetic dataset: images per split
    synthetic_classes: int = 10


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
    milestones: list = field(default_factory=lambda: [32000, 48000])  # step kind: lr /= 10 here
    gamma: float = 0.1
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
    compile: bool = False
    seed: int = 0
    workers: int = 0  # decoding worker processes (folder datasets of large images)
    eval_every: int = 0  # steps between evaluations; 0 = once per epoch
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
