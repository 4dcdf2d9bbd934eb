"""Where and how the math runs: device, precision, memory format, autocast.

One code path serves every precision: `autocast(rt)` is enabled only for bf16/fp16, and the
GradScaler only for fp16 (bf16 has fp32's exponent range, so it needs no loss scaling).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from resnetlab.config import TrainConfig
from resnetlab.cpu import cpu_flags, cpu_vendor, has_fast_bf16
from resnetlab.errors import UserError, option, warn
from resnetlab.models import conv_direct, conv_wgrad
from resnetlab.models.fused_bn import set_fused_bn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(DTYPES)  # what training and every float inference path run in
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")  # int8: post-training quantization, CPU only (models/quantize.py)
SWITCH = ("auto", "true", "false")  # channels_last and other settings that "auto" decides
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: str = "none"  # one of COMPILE_MODES
    fused_bn: bool = False  # batch-norm + ReLU (+ residual) fused in training (models/fused_bn.py)

    @property
    def amp_dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", channels_last: str = "auto",
                compile: str = "auto", local_rank: int = 0, fused_bn: str = "false") -> "Runtime":
        """The Runtime for the words a user writes (train.* keys, --device/--precision flags): each
        auto resolved for this machine, each bad value refused in one line. Warns when the CPU
        can only emulate the precision asked for. fused_bn is off unless asked: a training run and the
        eager evaluation of its checkpoint pass its train.fused_bn (auto), so that `eval RUN` scores as the
        run's own test did; inference and the reference of --verify run the plain modules (or fold BN away)."""
        device_ = resolve_device(device, local_rank)
        precision_ = resolve_precision(precision, device_)
        compile_mode = resolve_compile(compile, device_)
        rt = cls(device_, precision_, resolve_channels_last(channels_last), compile_mode,
                 resolve_fused_bn(device_, compile_mode, fused_bn, precision_))
        if (message := slow_precision_warning(rt)) is not None:
            warn(message)  # at the caller's own line: resnetlab.load(...), train_and_evaluate(...)
        return rt


def cpu_has_fast_bf16() -> bool:
    """This CPU's bf16 outruns its fp32: AMX, or AVX-512 BF16 on AMD (resnetlab.cpu.has_fast_bf16)."""
    return has_fast_bf16(cpu_flags(), cpu_vendor())


# Instructions that do bf16 / fp16 arithmetic in hardware. Without one of them the dtype has no
# fast kernels: on an AVX2-only AMD EPYC the bf16 and fp16 matmuls ran at 0.66 GMAC/s against
# 65-84 in fp32, and bf16 ResNet-20 training at 0.08x of fp32 channels_last (benchmarks/results/amd_epyc/).
NATIVE_HALF_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def slow_precision_warning(rt: "Runtime") -> str | None:
    """What to tell a user whose `rt` asks this CPU for a half precision it can only emulate, else None."""
    if rt.device.type != "cpu" or rt.precision not in NATIVE_HALF_FLAGS:
        return None
    flags = cpu_flags()
    if not flags or any(f in flags for f in NATIVE_HALF_FLAGS[rt.precision]):
        return None  # unknown CPU (no /proc/cpuinfo): say nothing rather than guess
    # ResNet-20 training, best half-precision variant against best fp32 one: bf16 0.73x against
    # 1.71x on the Ice Lake Xeon (benchmarks/results/xeon_icelake/train_resnet20.json), bf16 and
    # fp16 0.12x / 0.10x against 1.49x on the AVX2 EPYC (benchmarks/results/amd_epyc/).
    # "precision auto" fits both the CLI (--precision) and the Python API (precision=);
    # auto is not always fp32 here: bf16 on an AMD CPU with AVX-512 BF16, which has no fp16 instructions.
    auto = resolve_precision("auto", rt.device)
    return (f"this CPU has no {rt.precision} instructions ({' or '.join(NATIVE_HALF_FLAGS[rt.precision])}), "
            f"so {rt.precision} is emulated and runs slower than fp32 (measured on ResNet-20 training: 2.3x "
            "slower on an AVX-512 Xeon without them, 12-15x on an AVX2 CPU); "
            f"use precision auto ({auto} on this CPU)")


DEVICE_FORMS = "auto | cpu | cuda | cuda:N"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto, cpu, cuda or cuda:N; anything else (mps, 0, gpu) is refused in one line rather than
    failing later inside torch."""
    typed = isinstance(name, (str, torch.device))  # None or 0 from Python: said as given, with its type
    shown, name = None if typed else f"{name!r} ({type(name).__name__})", str(name).strip().lower()
    if not typed or not DEVICE_PATTERN.fullmatch(name):
        hint = f"; for a GPU write cuda:{name}" if name.isdigit() else ""
        raise UserError(f"device {shown or repr(name)} is not one resnetlab runs on{hint}; use {DEVICE_FORMS}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available here; use " + option(
                "--device cpu or auto", 'device="cpu" or "auto" (train.device=cpu to train)'))
        if device.index is None:  # one GPU per process under torchrun
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if name not in DTYPES:
        raise UserError(f"train.precision {name!r}: choose auto, {', '.join(DTYPES)}")
    return name


def resolve_channels_last(name: str) -> bool:
    """channels_last helps cuDNN (tensor cores) and oneDNN in every precision: measured 1.1-1.3x for
    fp32 ResNet training and inference on the CPU (benchmarks/README.md)."""
    if name == "auto":
        return True
    if name not in SWITCH[1:]:
        raise UserError(f"train.channels_last {name!r}: choose auto, true or false")
    return name == "true"


def resolve_compile(name: str, device: torch.device) -> str:
    """auto = none, measured (benchmarks/README.md): on an H100, torch.compile gave ResNet-20
    training 0.97x and ResNet-50 1.08x of eager bf16 channels_last, after a 20-60 s compile that
    doubled a 20 s CIFAR run; on the 2-core CPU 1.1x over channels_last for 1-2 minutes of
    compiling. Turn it on (true = mode default) for long runs of large nets. false = none."""
    if name == "auto":
        return "none"
    mode = {"true": "default", "false": "none"}.get(name, name)
    if mode not in COMPILE_MODES:
        raise UserError(f"train.compile {name!r}: choose auto, true, false or one of {', '.join(COMPILE_MODES)}")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise UserError("train.compile reduce-overhead replays CUDA graphs and needs a GPU; use default on the CPU")
    return mode


def resolve_fused_bn(device: torch.device, compile_mode: str, name: str = "auto", precision: str = "fp32") -> bool:
    """auto = on for eager training on the CPU: there batch-norm + ReLU + the residual addition cost
    more than the convolutions, and the fused kernels made ResNet-20 steps 1.4x faster in bf16 and
    1.2x in fp32 (channels_last, benchmarks/README.md). Off under torch.compile, which fuses them
    itself, and on CUDA, where the kernels do not run (cuDNN's batch-norm is one kernel already).
    false = PyTorch's own modules (to compare, or to rule the kernels out); true = on, where they run.
    The kernels take fp32 and bf16: fp16 runs PyTorch's modules (it claimed them and ran none)."""
    eligible = device.type == "cpu" and compile_mode == "none" and precision != "fp16"
    if name == "auto":
        return eligible
    if name not in SWITCH[1:]:
        raise UserError(f"train.fused_bn {name!r}: choose auto, true or false")
    if name == "true" and not eligible:
        where = ("on a GPU" if device.type != "cpu" else "in fp16 (they take fp32 and bf16)" if precision == "fp16"
                 else f"with train.compile {compile_mode} (which fuses them itself)")
        raise UserError(f"train.fused_bn true: the fused batch-norm kernels run in eager training on the CPU, "
                        f"not {where}; use auto or false")
    return name == "true"


def make_runtime(cfg: TrainConfig, local_rank: int = 0) -> Runtime:
    """The Runtime of a training config's train section."""
    return Runtime.resolve(cfg.device, cfg.precision, cfg.channels_last, cfg.compile, local_rank, cfg.fused_bn)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """torch.compile'd model, or the model itself for mode none. dynamic=False keeps one graph
    specialised to each batch shape (a run sees one or two, one more per side of
    data.progressive_scales, each compiled once) instead of a slower shape-generic one."""
    if mode not in COMPILE_MODES:
        raise UserError(f"compile mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.precision != "fp32")


def make_grad_scaler(rt: Runtime) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")


def prepare_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    set_fused_bn(model, rt.fused_bn)  # a module choice: training-mode BNs of the blocks use it
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_input(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x


def runtime_record(rt: Runtime) -> dict:
    """What computes a run's steps, as resolved on this machine: saved with each checkpoint, so that a
    resume where `auto` means something else (a requeue onto another kind of node) is told so."""
    return {"device": rt.device.type, "precision": rt.precision, "channels_last": rt.channels_last,
            "compile": rt.compile, "fused_bn": rt.fused_bn}


def describe_runtime(rt: Runtime) -> str:
    """The run's first line's words for how it computes: "cpu bf16 channels_last, fused batch-norm, ..."."""
    fused = rt.fused_bn and rt.channels_last
    return (f"{rt.device} {rt.precision}{' channels_last' if rt.channels_last else ''}"
            + (", fused batch-norm" if rt.fused_bn else "")
            + (f", 3x3 weight gradients on {conv_wgrad.kernel_kind()}" if fused and rt.precision == "bf16"
               and conv_wgrad.available() else "")
            + (", narrow and stage-entry 3x3 convolutions in the direct AVX-512 kernels" if fused
               and rt.precision == "fp32" and conv_direct.available() else "")
            + ("" if rt.compile == "none" else f", torch.compile ({rt.compile})"))
