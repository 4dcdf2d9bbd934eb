"""What a benchmark measures: the spec (model, task, batch, data, repetitions) and the variants.

A variant is one way of running the same network: the baseline (per-sample PIL pipeline, eager
fp32 NCHW) or ours (batched uint8 loader, a precision, a memory format, a compile mode, the
fused batch-norm). `parse_variant` reads the names the CLI and the suites use ("bf16-cl",
"fp32-cl-default", "int8"); `check_spec` and `check_variants` refuse what cannot run, in one line.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from resnetlab.engine.runtime import COMPILE_MODES, INFERENCE_PRECISIONS
from resnetlab.errors import UserError
from resnetlab.models import model_info

TASKS = ("train", "infer")


@dataclass(frozen=True)
class Variant:
    pipeline: str  # "baseline" (per-sample PIL + eager fp32 NCHW) | "ours" | "auto" (inference: what predict runs)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast) | int8 (quantized, CPU inference)
    channels_last: bool = False
    compile: str = "none"  # one of COMPILE_MODES; inference compiles with weight freezing (BN folded); auto: aoti | eager
    fused: bool = False  # training: batch-norm + ReLU (+ residual) fused (models/fused_bn.py)

    @property
    def label(self) -> str:
        if self.pipeline == "baseline":
            return "baseline"
        if self.pipeline == "auto":
            return f"auto ({self.precision}{'-cl' if self.channels_last else ''}-{self.compile})"
        return (f"{self.precision}{'-cl' if self.channels_last else ''}{'' if self.compile == 'none' else '-' + self.compile}"
                f"{'-fused' if self.fused else ''}")


BASELINE = Variant("baseline")
AUTO = Variant("auto")  # resolved per machine by auto_variant


@dataclass(frozen=True)
class BenchSpec:
    model: str = "resnet20"
    task: str = "train"  # train | infer
    batch_size: int = 128
    image_size: int | None = None  # None: the model's native size (32 CIFAR, 224 ImageNet)
    warmup: int = 2
    reps: int = 10
    device: str = "cpu"
    data: str | None = None  # ROOT/train/<class>/<image>; None: synthetic JPEG files
    images: int = 512  # images drawn from the data (both pipelines use the same files)
    weights: str | None = None  # inference: trained weights for the agreement check
    isolate: bool = True  # one fresh process per variant (peak memory per variant); False: all variants in
    # this process (less memory, no memory figure). On the CPU both time the variants round-robin
    # (timing.interleaved, processes.py); on a GPU isolated variants are timed one after another.
    cache_dir: str | None = None  # decoded-image cache of our pipeline (default: a temporary folder)
    threads: int | None = None  # torch intra-op threads (None: torch's default, one per core)

    @property
    def size(self) -> int:
        return self.image_size or model_info(self.model).input_size


def parse_variant(text: str) -> Variant:
    """'baseline', 'auto' (inference: the path predict takes on this machine), 'int8', or
    PRECISION[-cl][-COMPILE_MODE][-fused], e.g. 'fp32', 'bf16-cl', 'bf16-cl-default',
    'bf16-cl-fused' (training with models/fused_bn.py, eager only)."""
    if text == "baseline":
        return BASELINE
    if text == "auto":
        return AUTO
    if text.endswith("-fused"):
        v = parse_variant(text[: -len("-fused")])
        if v.pipeline == "baseline" or v.precision == "int8" or v.compile != "none":
            raise UserError(f"variant {text!r}: -fused goes after PRECISION[-cl] of an eager variant "
                            "(torch.compile fuses by itself), e.g. bf16-cl-fused")
        return replace(v, fused=True)
    if text.startswith("int8"):  # the quantized kernels choose their own layout, and run eagerly
        if text != "int8":
            raise UserError(f"variant {text!r}: int8 takes no memory format or compile mode; write int8")
        return Variant("ours", "int8")
    precision, _, rest = text.partition("-")
    channels_last = rest == "cl" or rest.startswith("cl-")
    mode = rest[3:] if rest.startswith("cl-") else ("" if rest == "cl" else rest)
    if precision not in INFERENCE_PRECISIONS or (mode or "none") not in COMPILE_MODES:
        raise UserError(f"variant {text!r}: write baseline, auto or PRECISION[-cl][-COMPILE] with PRECISION one of "
                        f"{', '.join(INFERENCE_PRECISIONS)} and COMPILE one of {', '.join(COMPILE_MODES[1:])}")
    return Variant("ours", precision, channels_last, mode or "none")


def check_spec(spec: BenchSpec) -> None:
    if spec.task not in TASKS:
        raise UserError(f"--task {spec.task!r}: choose one of {', '.join(TASKS)}")
    for name in ("batch_size", "reps", "images") + (("threads",) if spec.threads is not None else ()):
        if getattr(spec, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
    if spec.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {spec.warmup}")
    model_info(spec.model)  # raises UserError naming the known models
    if torch.device(spec.device).type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec.device}: CUDA is not available here; use --device cpu")


def auto_variant(spec: BenchSpec) -> Variant:
    """The inference path predict, eval and embed take here (inference.fastpath.choose_path)."""
    from resnetlab.inference.fastpath import path_here

    if spec.task != "infer":
        raise UserError("variant auto is the inference path of predict and eval; use it with --task infer")
    device = torch.device(spec.device)
    path = path_here(device.type, "auto", spec.size, device.type == "cuda" and torch.cuda.is_bf16_supported())
    return Variant("auto", path.precision, path.channels_last, "aoti" if path.compiled else "eager")


def check_variants(spec: BenchSpec, variants: list[Variant]) -> None:
    for v in variants:
        if v.precision == "int8" and spec.task != "infer":
            raise UserError("int8 is an inference precision (post-training quantization); train in fp32, bf16 or fp16")
        if v.precision == "int8" and torch.device(spec.device).type != "cpu":
            raise UserError("int8 runs on the CPU only; use bf16 or fp16 on a GPU")
        if v.fused and spec.task != "train":
            raise UserError(f"variant {v.label}: the fused batch-norm is for training; inference folds BN into the convolutions")
        if v.compile == "reduce-overhead" and torch.device(spec.device).type != "cuda":
            raise UserError(f"variant {v.label}: reduce-overhead replays CUDA graphs and needs --device cuda")
