"""Post-training int8 quantization for CPU inference.

Why: a CPU without AMX runs bf16 at about half its fp32 rate, so the only way past the fp32
ceiling is int8. AVX-512 VNNI does 4 int8 multiply-adds per lane where fp32 does one, and a
quantized ResNet also moves a quarter of the bytes. PyTorch's FX graph-mode quantization does
the work: it traces the network, folds each conv -> BN (-> ReLU) into one conv, inserts
observers that record activation ranges while a few calibration batches run, then swaps in
quantized kernels (fbgemm/oneDNN on x86, qnnpack on ARM). Weights are quantized per output
channel, activations per tensor from histograms (the backend's default qconfig), with one
exception: on x86 the activations get all 8 bits where the CPU has VNNI, 7 bits elsewhere.
x86 int8 kernels without VNNI multiply u8 x s8 pairs with VPMADDUBSW, whose 16-bit sums saturate
unless activations stay below 128 (PyTorch's x86 default, reduce_range=True, always pays that
bit). VNNI's VPDPBUSD sums into 32 bits, so there the 7-bit grid only costs accuracy; PyTorch
recommends 8 bits on VNNI for oneDNN, and the same kernels run for the x86 backend.

    qmodel = quantize_int8(model, calibration=[normalize(x) for x in some_real_batches])
    logits = qmodel(normalize(x))   # fp32 in, fp32 out; int8 in between

The result is an inference-only `torch.fx.GraphModule` on the CPU: it has the model's forward,
not its other methods (forward_features, ...). Calibrate on real images of the kind it will see;
how well it agrees with fp32 is measured, not assumed (bench --task infer, predict --verify).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from resnetlab.cpu import cpu_flags
from resnetlab.errors import UserError, option

BACKENDS = ("x86", "fbgemm", "onednn", "qnnpack")  # order of preference when none is asked for
CALIBRATION_IMAGES = 256  # enough images for every activation's range; more only costs time
FP32 = 'precision="fp32"'  # the way out of int8, as a Python caller says it (errors.option)


def calibration_sample(n: int, images: int = CALIBRATION_IMAGES) -> list[int]:
    """Indices of up to `images` of `n` items, spread evenly, so a sorted folder gives every class."""
    return list(range(0, n, max(1, n // images)))[:images]


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # u8 x s8 dot products summed in 32 bits


def activation_reduce_range(backend: str) -> bool:
    """Whether activations must use 7 bits (0..127) for `backend` on this CPU: see the module doc."""
    if backend == "qnnpack":
        return False  # the ARM library's own default: its kernels are not the x86 ones above
    return not any(flag in cpu_flags() for flag in VNNI_FLAGS)


def qconfig_mapping(backend: str, reduce_range: bool):
    """The backend's default mapping (fusions, fixed-range ops such as sigmoid) with its global
    qconfig's activation observer set to `reduce_range`."""
    from torch.ao.quantization import QConfig, get_default_qconfig, get_default_qconfig_mapping

    default = get_default_qconfig(backend)
    activation = default.activation.with_args(reduce_range=reduce_range)
    return get_default_qconfig_mapping(backend).set_global(QConfig(activation=activation, weight=default.weight))


def default_backend() -> str:
    """The best quantized kernel library this torch build has for this CPU."""
    for name in BACKENDS:
        if name in torch.backends.quantized.supported_engines:
            return name
    raise UserError("this PyTorch build has no quantized CPU kernels (torch.backends.quantized.supported_engines "
                    f"is empty); int8 inference is not available here, use {option('--precision fp32', FP32)}")


@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], backend: str | None = None,
                  reduce_range: bool | None = None) -> nn.Module:
    """An int8 copy of `model` (left untouched), calibrated on normalised fp32 batches (B, 3, H, W).

    A few hundred images are plenty: the observers only need each activation's range. Sets
    torch.backends.quantized.engine to `backend`, because the packed weights belong to that
    library and must run under it. reduce_range None: 7-bit activations unless this CPU has VNNI
    (quantize on the machine that will run the model; a VNNI-calibrated model saturates elsewhere).
    """
    try:
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:  # torch plans to move quantization out to torchao
        raise UserError(f"this PyTorch ({torch.__version__}) has no FX graph-mode quantization ({e}); int8 "
                        f"inference needs torch 2.4-2.13, use {option('--precision fp32', FP32)} otherwise") from None
    backend = backend or default_backend()
    if backend not in torch.backends.quantized.supported_engines:
        raise UserError(f"quantized backend {backend!r} is not in this build; it has "
                        f"{', '.join(torch.backends.quantized.supported_engines)}")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise UserError("int8 inference runs on the CPU only; move the model to the CPU (or use bf16/fp16 on a GPU)")
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise UserError("int8 calibration needs at least one batch of images")
    torch.backends.quantized.engine = backend
    net = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():  # quantized tensors warn of torch's deprecation plans; not the user's to act on
        warnings.simplefilter("ignore")
        if reduce_range is None:
            reduce_range = activation_reduce_range(backend)
        prepared = prepare_fx(net, qconfig_mapping(backend, reduce_range), example_inputs=(first.float(),))
        for x in [first, *batches]:
            prepared(x.float().contiguous())
        return convert_fx(prepared)


def is_quantized(model: nn.Module) -> bool:
    """True for a model made by quantize_int8 (it holds quantized convolutions)."""
    from torch.ao.nn.quantized import Conv2d as QConv2d

    return any(isinstance(m, QConv2d) for m in model.modules())
