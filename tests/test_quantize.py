"""int8 post-training quantization: every block type quantizes, the result tracks fp32, errors are clear."""
import pytest
import torch
from torch import nn

from resnetlab.bench.machine import matmul_peak
from resnetlab.bench.spec import BenchSpec, check_variants, parse_variant
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models import quantize
from resnetlab.models.quantize import activation_reduce_range, default_backend, is_quantized, quantize_int8

# One of each structure: option A zero-pad shortcut, plain twin, pre-activation (BN after the
# addition), option B projection, option C on every block, bottleneck.
CASES = [("resnet20", {}, 32), ("plain20", {}, 32), ("preact_resnet110", {}, 32), ("resnet18", {}, 64),
         ("resnet20", {"shortcut": "C"}, 32), ("resnet50", {}, 64)]


def trained_like(name: str, kwargs: dict, size: int) -> nn.Module:
    """A random model whose BN statistics come from data, so eval-mode activations have real scales."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, size, size))
    return model.eval()


@pytest.mark.parametrize("name,kwargs,size", CASES, ids=[f"{n}{k.get('shortcut', '')}" for n, k, _ in CASES])
def test_int8_copy_tracks_fp32_and_quantizes_every_conv(name, kwargs, size):
    torch.set_num_threads(1)
    model = trained_like(name, kwargs, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 3, size, size, generator=gen) for _ in range(2)]
    qmodel = quantize_int8(model, calibration)

    assert is_quantized(qmodel) and not is_quantized(model)
    assert not any(type(m) is nn.Conv2d for m in qmodel.modules())  # no convolution left in float
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched

    x = torch.randn(32, 3, size, size, generator=gen)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # int8 rounding moves logits by a few percent of their spread; broken scales or a missing
    # dequantization would not stay this close.
    cos = nn.functional.cosine_similarity(out - out.mean(1, keepdim=True), ref - ref.mean(1, keepdim=True)).min()
    assert cos > 0.95, f"min cosine similarity {cos:.3f}"


def test_calibration_and_backend_errors_are_clear():
    model = create_model("resnet20", num_classes=10).eval()
    with pytest.raises(UserError, match="at least one batch"):
        quantize_int8(model, [])
    with pytest.raises(UserError, match="not in this build"):
        quantize_int8(model, [torch.randn(2, 3, 32, 32)], backend="tpu")
    assert default_backend() in torch.backends.quantized.supported_engines


def test_bench_int8_variant_is_inference_on_the_cpu_only():
    assert parse_variant("int8").precision == "int8" and parse_variant("int8").label == "int8"
    with pytest.raises(UserError, match="no memory format or compile mode"):
        parse_variant("int8-cl")
    with pytest.raises(UserError, match="inference precision"):
        check_variants(BenchSpec(task="train"), [parse_variant("int8")])
    check_variants(BenchSpec(task="infer"), [parse_variant("int8")])
    assert matmul_peak("int8", n=256, reps=1) > 0


def input_scale(qmodel: nn.Module) -> float:
    return float(qmodel.get_buffer("conv1_input_scale_0"))  # the image's quantization step


@pytest.fixture(scope="module")
def resnet20_scales():
    """(model, calibration, 7-bit input scale, 8-bit input scale): quantized once for every flag set."""
    model = trained_like("resnet20", {}, 32)
    calibration = [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    seven, eight = (input_scale(quantize_int8(model, calibration, reduce_range=r)) for r in (True, False))
    return model, calibration, seven, eight


def test_8_bit_activations_halve_the_rounding_step(resnet20_scales):
    _, _, seven, eight = resnet20_scales
    assert seven / eight == pytest.approx(255 / 127, rel=0.02)  # the same range on a grid twice as fine


@pytest.mark.parametrize("flags, reduce_range", [({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False),
                                                 ({"avx2", "avx_vnni"}, False), (set(), True)])
def test_activations_get_8_bits_only_where_the_cpu_has_vnni(monkeypatch, resnet20_scales, flags, reduce_range):
    # Without VNNI the u8 x s8 kernels add pairs in 16 bits and saturate above 7-bit activations;
    # with it the 8th bit halves every activation's rounding step.
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset(flags))
    assert activation_reduce_range("x86") is reduce_range
    assert activation_reduce_range("qnnpack") is False
    model, calibration, seven, eight = resnet20_scales
    assert input_scale(quantize_int8(model, calibration)) == (seven if reduce_range else eight)
