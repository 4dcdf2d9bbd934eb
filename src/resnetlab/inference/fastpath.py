"""The fastest inference path that gives fp32's answers, chosen per machine, compiled once.

`choose_path` is a pure function of (device, CPU flags, precision request, input size) that
names the path: precision, memory format, BN folded, compiled or eager. Every choice cites the
measurement behind it. `prepare_inference` applies it to a model; predict, eval, embed,
`resnetlab.load` and `resnetlab bench`'s auto variant all go through it, so they run the same
kernels.

A compiled path is one AOTInductor package per checkpoint (`torch.export` with a dynamic batch
dimension, then `torch._inductor.aoti_compile_and_package` with inductor's weight freezing), giving
both the logits and the pooled features, built the first time a checkpoint runs on a machine and
kept in the compiled-model cache (compile_cache.py): later runs load it in milliseconds. Inputs of another size than the package's (multi-scale testing,
small photos decoded at their own size) run the same model eagerly. Without a C++ compiler, or
if compiling fails, one warning says so and the eager path runs. RESNETLAB_COMPILE=0 turns
compiling off (the test suite does, except in the tests of this module).
"""
from __future__ import annotations

import copy
import os
import shutil
import threading
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from resnetlab.errors import ResnetlabWarning

from . import compile_cache

COMPILE_ENV = "RESNETLAB_COMPILE"  # "0" / "off" / "false": never compile for inference
MIN_AGREEMENT = 99.5  # % top-1 agreement with plain fp32 on a trained net's test split, for any auto path
LARGE_IMAGES = 96  # px; see choose_path (measured at 32 and 224 px only)


@dataclass(frozen=True)
class InferencePath:
    precision: str  # fp32 | bf16 | fp16: the dtype the convolutions run in
    channels_last: bool
    compiled: bool  # an AOTInductor package of the BN-folded model (cached per checkpoint and machine)
    fold_bn: bool = True  # BatchNorm folded into the convolutions (always, but for --no-fuse)

    @property
    def label(self) -> str:
        return f"{self.precision}{' channels_last' if self.channels_last else ''}{' compiled' if self.compiled else ''}"


def choose_path(device: str, flags: frozenset[str], precision: str = "auto", image_size: int = 32,
                cuda_bf16: bool = False, vendor: str = "") -> InferencePath:
    """The inference path for a device type ("cpu", "cuda"), the CPU's /proc/cpuinfo flags (and
    vendor_id, resnetlab.cpu.cpu_vendor), a precision request (auto | fp32 | bf16 | fp16; int8 is
    chosen by the caller, never here) and the input's side in px. Ratios below are same-run
    speed-ups over the eager fp32 NCHW baseline (benchmarks/README.md, benchmarks/results/);
    agreement is in benchmarks/results/*/infer_agreement_resnet20.json."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"choose_path: precision {precision!r} (int8 is quantized by the caller)")
    if device == "cuda":
        # Eager, as measured on an H100 (benchmarks/results/gpu/infer_resnet50_cuda.json); compiled
        # inference on CUDA has not been measured here.
        return InferencePath(("bf16" if cuda_bf16 else "fp32") if precision == "auto" else precision, True, False)
    from resnetlab.cpu import has_fast_bf16

    fast_bf16 = has_fast_bf16(flags, vendor)
    if precision == "fp32":
        # Exact fp32: folded BN, channels_last, eager oneDNN kernels; top-1 equal to plain fp32
        # (tests/test_fastpath.py). Never compiled, so no fp32 sum is reordered by inductor.
        return InferencePath("fp32", True, False)
    if precision in ("bf16", "auto") and fast_bf16:
        # 2-core Xeon with AMX (issue 18, 2026-12-01): compiled bf16 channels_last 6.94x (ResNet-20,
        # batch 128) and 14.27x (ResNet-50, batch 32) against 3.40x / 4.56x eager bf16, with
        # >= 99.5% top-1 agreement with fp32 on the trained ResNet-20's 10,000 test images.
        # 2-core AMD EPYC with AVX-512 BF16 (2026-12-03, benchmarks/results/amd_epyc_avx512/):
        # compiled bf16 2.95x (ResNet-20) against 1.56x compiled fp32, agreement in
        # infer_agreement_resnet20.json.
        return InferencePath("bf16", True, True)
    if precision in ("bf16", "fp16"):
        return InferencePath(precision, True, False)  # asked for explicitly, without AMX: as before, eager
    if not flags:
        return InferencePath("fp32", True, False)  # unknown CPU: the portable eager path, no guess
    if "avx512f" in flags and "avx512_bf16" in flags:
        # Xeon with AVX-512 BF16, no AMX (benchmarks/results/infer_resnet{20,50}.json): at 32 px
        # eager fp32 channels_last 2.54x against 1.77x compiled; at 224 px compiled 1.92x against
        # 1.66x. Sizes in between are unmeasured; LARGE_IMAGES splits them.
        return InferencePath("fp32", True, image_size >= LARGE_IMAGES)
    # Ice Lake Xeon (AVX-512 without BF16, benchmarks/results/xeon_icelake/infer_resnet{20,50}.json):
    # compiled fp32 channels_last ahead at 32 px as well: 1.73x against 1.33x eager (ResNet-20), and
    # 2.55x against 1.77x at 224 px (ResNet-50); 100% top-1 agreement with fp32 on the trained
    # ResNet-20's 10,000 test images (infer_agreement_resnet20.json).
    # AVX2 AMD EPYC (benchmarks/results/amd_epyc/infer_resnet{20,50}.json): compiled fp32
    # channels_last 1.67x / 1.78x against 1.09x / 1.49x eager.
    return InferencePath("fp32", True, "avx2" in flags)


def path_here(device: str, precision: str = "auto", image_size: int = 32, cuda_bf16: bool = False) -> InferencePath:
    """choose_path for this machine's CPU (its flags and vendor): what predict, eval, embed and
    the bench's auto variant run."""
    from resnetlab.cpu import cpu_flags, cpu_vendor

    return choose_path(device, cpu_flags(), precision, image_size, cuda_bf16, cpu_vendor())


def compiling_enabled() -> bool:
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def has_compiler() -> bool:
    """Inductor builds its kernels with the C++ compiler in $CXX (default g++)."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


class Heads(nn.Module):
    """fp32 input -> (fp32 logits, fp32 pooled features), the network in `dtype`: the graph that is
    compiled, one package serving both predict and embed."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        feat = self.model.forward_features(x.to(self.dtype))
        return self.model.forward_head(feat).float(), self.model.forward_head(feat, pre_logits=True).float()


class FastModel(nn.Module):
    """A prepared (folded, channels_last) model whose forward pass and embeddings run through an
    AOTInductor package for inputs of (3, size, size), built or loaded on first use, and eagerly
    (under the caller's autocast) for any other input or when no package can be had."""

    def __init__(self, eager: nn.Module, name: str, path: InferencePath, size: int, weights: str):
        super().__init__()
        self.eager, self.name, self.path, self.size, self.weights = eager, name, path, size, weights
        self.num_features = getattr(eager, "num_features", None)
        self._package = None
        self._tried = False  # one attempt per process: a failed build warns once, then runs eagerly
        self._first_use = threading.Lock()  # threads sharing the model: one builds or loads, the others wait

    def __getstate__(self):
        """For copy.deepcopy and pickle: a loaded package is torch's C++ loader, and a lock, neither of
        which they can copy; the copy loads the package again (from the cache) on its first use."""
        return {**self.__dict__, "_package": None, "_tried": False, "_first_use": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._first_use = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        package = self._runner(x)
        return self.eager(x) if package is None else self._run(package, x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        package = self._runner(x)
        if package is None:
            from resnetlab.models.features import embed

            return embed(self.eager, x)
        return self._run(package, x)[1]

    def _run(self, package, x: torch.Tensor) -> list[torch.Tensor]:
        # The package was built for fp32 channels_last input; the caller's autocast must not reach
        # the kernels inside it (their dtype is fixed at compile time).
        with torch.autocast(x.device.type, enabled=False):
            return package(x.to(compile_cache.INPUT_DTYPE).contiguous(memory_format=torch.channels_last))

    def _runner(self, x: torch.Tensor):
        if tuple(x.shape[1:]) != (3, self.size, self.size) or x.device.type != "cpu":
            return None
        if not self._tried:
            with self._first_use:
                if not self._tried:
                    self._package = self._load()
                    self._tried = True
        return self._package

    def _load(self):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.path.precision]
        module = Heads(copy.deepcopy(self.eager).to(dtype), dtype).eval()
        key = compile_cache.entry_key(self.name, self.weights, self.eager, self.path.precision,
                                      "channels_last" if self.path.channels_last else "contiguous", self.size)
        # the dtype _run feeds, whatever torch's default: a float64 example made a package that read float32 as float64
        example = torch.zeros(2, 3, self.size, self.size, dtype=compile_cache.INPUT_DTYPE)
        example = example.contiguous(memory_format=torch.channels_last)
        what = f"{self.name} for {self.path.precision}{' channels_last' if self.path.channels_last else ''}"
        try:
            return compile_cache.load_or_build(module, example, key, what, estimate_seconds(self.eager))
        except Exception as e:  # noqa: BLE001  (export, inductor or the C++ build failed: eager still works)
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            warnings.warn(f"compiling {what} failed ({type(e).__name__}: {reason}); running it eagerly, "
                          "which is slower", ResnetlabWarning, stacklevel=4)
            return None


def estimate_seconds(model: nn.Module) -> int:
    """Rough AOTInductor build time on a 2-core CPU shared with other work: ResNet-20 (22 conv and
    linear layers) took 15-37 s, ResNet-50 (54) 31 s."""
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    return int(max(10, round(15 + 0.4 * layers, -1)))


def prepare_inference(model: nn.Module, name: str, device: str = "auto", precision: str = "auto",
                      image_size: int = 32, fuse: bool = True, channels_last: str = "true"):
    """(model ready for inference, its engine Runtime): BN folded, on the device, in the chosen
    layout, compiled where `choose_path` says so. `fuse=False` or channels_last "false": eager,
    as asked (for debugging and the plain fp32 reference)."""
    from resnetlab.engine.runtime import Runtime, prepare_model, resolve_device
    from resnetlab.models.fuse import fuse_bn

    dev = resolve_device(device)
    cuda_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    path = path_here(dev.type, precision, image_size, cuda_bf16)
    layout = str(path.channels_last).lower() if channels_last == "auto" else channels_last
    rt = Runtime.resolve(device=str(dev), precision=path.precision, channels_last=layout)
    prepared = prepare_model(fuse_bn(model) if fuse else model.eval(), rt)
    if not (path.compiled and fuse and rt.channels_last and compiling_enabled()):
        return prepared, rt
    if not has_compiler():
        warnings.warn(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) found, so {name} runs eagerly in "
                      f"{path.precision}; install g++ for the compiled path, about 2x faster", ResnetlabWarning,
                      stacklevel=2)
        return prepared, rt
    return FastModel(prepared, name, path, image_size, compile_cache.weights_digest(model)), rt


def embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features of a prepared model (FastModel or plain), as models.features.embed."""
    from resnetlab.models.features import embed

    return model.embed(x) if isinstance(model, FastModel) else embed(model, x)
