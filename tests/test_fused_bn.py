"""The fused batch-norm + ReLU (+ residual): equal to the plain modules within the dtype's
rounding, in training (forward, backward and running statistics) and in evaluation without
gradients; a module choice that leaves state_dicts, traces and every other path alone."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.config import load_config
from resnetlab.engine.runtime import Runtime, make_runtime, prepare_model, resolve_fused_bn
from resnetlab.errors import ResnetlabWarning, UserError
from resnetlab.models import create_model
from resnetlab.models import fused_bn
from resnetlab.models.fused_bn import bn_relu, set_fused_bn
from resnetlab.models.native import NativeKernels, source_text

from batchnorms import TOLERANCE, random_bn

CL = torch.channels_last


def test_the_kernels_build_here():
    # without this the equality tests below would compare the plain modules with themselves
    assert fused_bn.EXTENSION.get() is not None, fused_bn.EXTENSION.broken
    assert fused_bn.fusable(nn.BatchNorm2d(4), torch.randn(2, 4, 3, 3))


def _residual_away_from_zero(bn, x):
    """A random residual r with |bn(x) + r| >= 0.05 everywhere. bf16 rounds bn(x) before the plain
    path adds r, so where the sum is within rounding of 0 the two paths may disagree on the ReLU
    mask -- both rightly; such points would test the rounding, not the kernels."""
    xd = x.double()
    mean, var = xd.mean((0, 2, 3), keepdim=True), xd.var((0, 2, 3), unbiased=False, keepdim=True)
    z = (xd - mean) / (var + bn.eps).sqrt() * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)
    r = torch.randn(x.shape, dtype=torch.float64)
    r = torch.where((z + r).abs() < 0.05, r + 0.1 * torch.sign(z + r + 1e-9), r)
    return r.to(x.dtype)


def _run(bn, x, residual, dy, fused):
    """(output, gradients of x, weight, bias and residual) of relu(bn(x) + residual)."""
    leaves = [t.detach().clone().requires_grad_() for t in ([x] if residual is None else [x, residual])]
    out = bn_relu(bn, leaves[0], nn.ReLU(), leaves[1] if residual is not None else None, fused=fused)
    out.backward(dy)
    grads = [leaves[0].grad, bn.weight.grad, bn.bias.grad] + ([leaves[1].grad] if residual is not None else [])
    return out.detach(), grads


def every_kernel_case(test):
    """Parametrize over dtype x layout x residual: every instantiation of the kernels' templates."""
    for name, values in (("dtype", [torch.float32, torch.bfloat16, torch.float64]),
                         ("layout", [torch.contiguous_format, CL]), ("with_residual", [False, True])):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def _input(dtype, layout, mean: float):
    # 20 channels x 5x7 maps x 6 images: no channel count, row count or plane size a multiple of
    # a vector, so every tail path of the kernels runs
    return (torch.randn(6, 20, 5, 7, dtype=torch.float64) * 3 + mean).to(dtype).contiguous(memory_format=layout)


def _close(actual, expected, dtype, what):
    scale = expected.double().abs().max().item() + 1e-30
    error = (actual.double() - expected.double()).abs().max().item() / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"


@every_kernel_case
def test_fused_equals_plain_forward_backward_and_running_stats(dtype, layout, with_residual):
    torch.manual_seed(1)
    x = _input(dtype, layout, mean=40)  # a mean far from 0 tests the shifted sums
    dy = torch.randn(x.shape, dtype=dtype)  # NCHW even for channels_last x, as average pooling hands it
    # bf16 runs with fp32 BN, as under autocast
    plain_bn = random_bn(20).to(torch.float64 if dtype == torch.float64 else torch.float32)
    fused_bn_ = copy.deepcopy(plain_bn)
    residual = _residual_away_from_zero(plain_bn, x).contiguous(memory_format=layout) if with_residual else None
    out_plain, grads_plain = _run(plain_bn, x, residual, dy, fused=False)
    out_fused, grads_fused = _run(fused_bn_, x, residual, dy, fused=True)
    assert out_fused.dtype == dtype and out_fused.is_contiguous(memory_format=layout)
    _close(out_fused, out_plain, dtype, "output")
    for name, a, b in zip(("dx", "dweight", "dbias", "dresidual"), grads_fused, grads_plain):
        assert a.dtype == b.dtype
        _close(a, b, dtype, name)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # kept in the parameters' dtype
    for name in ("running_mean", "running_var"):
        _close(getattr(fused_bn_, name), getattr(plain_bn, name), stats_dtype, name)
    assert fused_bn_.num_batches_tracked.item() == plain_bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_backward_finds_relus_mask_in_x_bit_for_bit_as_in_y(dtype, layout):
    # Without a residual the backward decides where ReLU let the gradient through from x and the
    # forward's scale and shift instead of reading y: the same bits must decide. Each channel holds
    # -a and +a equally often, and its bias is chosen so that the value before ReLU at +a,
    # fma(a, scale, shift), is 0 up to rounding: kept in some channels and not in others by the
    # last bits, where a mask computed any other way (rounding the product first, another scale or
    # shift) would differ.
    kernels = fused_bn.EXTENSION.get()
    torch.manual_seed(3)
    a = torch.rand(1, 24, 1, 1, dtype=torch.float64) + 0.5
    signs = torch.where(torch.rand(8, 24, 5, 6) < 0.5, 1.0, -1.0).double()
    x = (a * torch.cat([signs, -signs])).to(dtype).contiguous(memory_format=layout)
    weight, stats = torch.rand(24) + 0.5, (torch.zeros(24), torch.ones(24), 0.1, 1e-5)
    _, _, _, scale, shift = kernels.forward(x, None, weight, torch.zeros(24), *stats)  # scale is the bias's too
    bias = -(x.amax((0, 2, 3)).to(scale.dtype) * scale) - shift
    y, mean, invstd, scale, shift = kernels.forward(x, None, weight, bias, *stats)
    at_plus_a = y[x > 0].double()
    assert (at_plus_a == 0).any() and (at_plus_a > 0).any()  # both sides of the last bits are tested
    assert at_plus_a.max() < 1e-5  # and all of it within rounding of 0
    dy = torch.randn(x.shape, dtype=dtype).contiguous(memory_format=layout)
    from_y = kernels.backward(dy, y, x, weight, mean, invstd, scale, shift, False)
    from_x = kernels.backward(dy, None, x, weight, mean, invstd, scale, shift, False)
    for a, b in zip(from_x[:3], from_y[:3]):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="needs the output y"):  # with a residual, x alone cannot tell
        kernels.backward(dy, None, x, weight, mean, invstd, scale, shift, True)


def test_cumulative_momentum_and_repeated_steps_track_the_plain_statistics():
    plain, fused = random_bn(4, momentum=None), random_bn(4, momentum=None)
    for step in range(3):
        x = torch.randn(3, 4, 6, 6) * (step + 1) + step
        bn_relu(plain, x, torch.relu, fused=False)
        bn_relu(fused, x, torch.relu, fused=True)
    assert fused.num_batches_tracked.item() == 3
    torch.testing.assert_close(fused.running_mean, plain.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_var, plain.running_var, rtol=1e-5, atol=1e-6)


@every_kernel_case
def test_eval_mode_without_gradients_equals_the_plain_modules(dtype, layout, with_residual):
    torch.manual_seed(2)
    x = _input(dtype, layout, mean=1)
    bn = random_bn(20).to(torch.float64 if dtype == torch.float64 else torch.float32).eval()
    residual = torch.randn(x.shape, dtype=torch.float64).to(dtype).contiguous(memory_format=layout) if with_residual else None
    with torch.no_grad():
        assert fused_bn.inferable(bn, x, residual)
        fused = bn_relu(bn, x, nn.ReLU(), residual, fused=True)
        plain = bn_relu(bn, x, nn.ReLU(), residual, fused=False)
    assert fused.dtype == dtype and fused.is_contiguous(memory_format=layout)
    _close(fused, plain, dtype, "output")
    assert bn.num_batches_tracked.item() == 0  # evaluation leaves the statistics alone


def test_eval_mode_with_gradients_or_in_a_trace_runs_the_plain_modules_exactly():
    # a BN frozen in eval mode while fine-tuning still passes gradients; traces must see the modules
    bn = random_bn(8).eval()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = bn_relu(bn, x, torch.relu, fused=True)
    assert torch.equal(out, torch.relu(bn(x))) and out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and bn.weight.grad is not None
    model = create_model("resnet8", num_classes=3).eval()
    set_fused_bn(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 3, 16, 16))
    assert "batch_norm" in str(traced.inlined_graph)


def test_the_eval_kernel_leaves_hooks_mismatches_and_inference_runtimes_to_the_plain_modules():
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        wrong = random_bn(16).eval()  # a channel count that does not fit: PyTorch's own error, not a wrong read
        assert not fused_bn.inferable(wrong, x)
        with pytest.raises(RuntimeError, match="running_mean should contain 8 elements not 16"):
            bn_relu(wrong, x, torch.relu, fused=True)
        with pytest.raises(RuntimeError, match="one value per channel"):  # and the kernel checks it too
            fused_bn.EXTENSION.get().inference(x, None, torch.ones(4), torch.zeros(4), torch.zeros(4), torch.ones(4), 1e-5)
        bn = random_bn(8).eval()
        assert not fused_bn.inferable(bn, x, torch.randn(2, 8, 4, 4, dtype=torch.float64))  # the plain path promotes
        seen = []
        bn.register_forward_hook(lambda module, args, out: seen.append(out.shape))  # layer analyses use hooks
        assert not fused_bn.inferable(bn, x)
        bn_relu(bn, x, torch.relu, fused=True)
        assert seen == [x.shape]
    # inference and checkpoint evaluation (and --verify's reference) resolve their runtime without the kernels
    assert not Runtime.resolve(device="cpu", precision="fp32").fused_bn


def test_unsupported_inputs_run_the_plain_modules():
    x = torch.randn(2, 8, 4, 4)
    train = random_bn(8)
    for odd in (x.half(), x[:, :, ::2, :]):  # fp16; a strided view that is neither layout
        assert not fused_bn.fusable(train, odd)
    assert not fused_bn.fusable(nn.SyncBatchNorm(8), x) and not fused_bn.fusable(nn.Identity(), x)


def test_a_hooked_batch_norm_trains_as_the_module():
    x = torch.randn(2, 8, 4, 4)
    bn, seen = random_bn(8), []
    assert fused_bn.fusable(bn, x)
    bn.register_full_backward_hook(lambda module, gin, gout: seen.append("backward"))
    assert not fused_bn.fusable(bn, x)
    bn_relu(bn, x.requires_grad_(), torch.relu, fused=True).sum().backward()
    assert seen == ["backward"]


def _step(model, x, y, autocast_dtype=None):
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    return logits.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet110", "resnet50", "resnet18"])
def test_a_fused_network_trains_exactly_like_the_plain_one_in_fp64(name):
    # fp64 makes the comparison exact up to summation order: any plumbing mistake (a residual
    # gradient lost, a stem or final BN not switched back) shows as a large difference
    torch.manual_seed(0)
    batch, size = (2, 64) if name == "resnet50" else (4, 32)
    plain = create_model(name, num_classes=10).double().train()
    fused = copy.deepcopy(plain)
    assert set_fused_bn(fused) > 0 and fused.fused_bn and fused.layer1[0].fused_bn
    assert list(fused.state_dict()) == list(plain.state_dict())  # checkpoints and published weights load unchanged
    x, y = torch.randn(batch, 3, size, size, dtype=torch.float64), torch.arange(batch)
    logits_plain, grads_plain = _step(plain, x, y)
    logits_fused, grads_fused = _step(fused, x, y)
    torch.testing.assert_close(logits_fused, logits_plain, rtol=1e-9, atol=1e-9)
    for n in grads_plain:
        torch.testing.assert_close(grads_fused[n], grads_plain[n], rtol=1e-7, atol=1e-9, msg=n)
    for (n, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    with torch.no_grad():  # evaluation (the eval-mode kernel) on the statistics training left
        torch.testing.assert_close(fused.eval()(x), plain.eval()(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_a_fused_resnet20_step_in_bf16_matches_the_plain_one_within_rounding(layout):
    torch.manual_seed(0)
    plain = create_model("resnet20", num_classes=10).train().to(memory_format=layout)
    fused = copy.deepcopy(plain)
    set_fused_bn(fused)
    x, y = torch.randn(8, 3, 32, 32).contiguous(memory_format=layout), torch.arange(8)
    reference, _ = _step(copy.deepcopy(plain).double(), x.double(), y)
    logits_plain, _ = _step(plain, x, y, torch.bfloat16)
    logits_fused, _ = _step(fused, x, y, torch.bfloat16)
    # the fused path is no further from the fp64 result than bf16's own rounding puts the plain one
    error_plain = (logits_plain - reference).abs().max()
    assert (logits_fused - reference).abs().max() <= 2 * error_plain + 1e-3


def test_a_compiler_that_fails_leaves_training_on_the_plain_modules(monkeypatch):
    kernels = fused_bn.EXTENSION
    broken = NativeKernels(kernels.source, kernels.prefix, kernels.what, kernels.fallback)  # a fresh, unbuilt twin

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(fused_bn, "EXTENSION", broken)
    bn, x = random_bn(4), torch.randn(2, 4, 3, 3)
    expected = torch.relu(copy.deepcopy(bn)(x))
    with pytest.warns(ResnetlabWarning, match="could not be built.*command not found.*plain batch-norm"):
        out = bn_relu(bn, x, torch.relu, fused=True)
    torch.testing.assert_close(out, expected)
    assert broken.broken and not fused_bn.fusable(bn, x)  # decided once: no second warning, no retry


def test_the_build_is_keyed_on_the_headers_the_source_includes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "k.cpp").write_text('#include <vector>\n#include "p.h"\n#include "sub/p.h"\nint f();\n')
    (tmp_path / "p.h").write_text('#pragma once\n#include "k.cpp"\n #include "missing.h"\nint g();\n')
    (tmp_path / "sub" / "p.h").write_text('#include "../p.h"\nint h();\n')
    text = source_text(tmp_path / "k.cpp")
    # both p.h (same name, other folders), each once; no loop back; a missing one skipped
    assert text.count("int g();") == 1 and "int h();" in text and text.count("int f();") == 1
    assert "channel_sums" in source_text(fused_bn.SOURCE)  # the passes' header is part of the build's key


def test_the_runtime_fuses_eager_cpu_training_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_fused_bn(cpu, "none") and not resolve_fused_bn(cpu, "default") and not resolve_fused_bn(cuda, "none")
    model = create_model("resnet20", num_classes=10)
    prepare_model(model, Runtime(cpu, "fp32", True, fused_bn=True))
    assert all(m.fused_bn for m in model.modules() if hasattr(m, "fused_bn"))
    prepare_model(model, Runtime(cpu, "fp32", True))
    assert not any(m.fused_bn for m in model.modules() if hasattr(m, "fused_bn"))


def test_train_fused_bn_switch_turns_the_kernels_off_or_refuses_where_they_cannot_run():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not resolve_fused_bn(cpu, "none", "false") and resolve_fused_bn(cpu, "none", "true")
    cfg = load_config("cifar10_fast", ["train.device=cpu", "train.fused_bn=false"])  # YAML reads false as a bool
    assert cfg.train.fused_bn == "false" and not make_runtime(cfg.train).fused_bn
    assert make_runtime(load_config("cifar10_fast", ["train.device=cpu"]).train).fused_bn  # auto: on
    with pytest.raises(UserError, match="on a GPU"):
        resolve_fused_bn(cuda, "none", "true")
    with pytest.raises(UserError, match="fuses them itself"):
        resolve_fused_bn(cpu, "default", "true")
    with pytest.raises(UserError, match="choose auto, true or false"):
        resolve_fused_bn(cpu, "none", "yes")



def test_fp16_training_runs_no_fused_kernel_and_does_not_claim_one(recwarn):
    """The kernels take fp32 and bf16: fp16 ran PyTorch's modules while the run's header and bench
    said "fused batch-norm", and train.fused_bn=true was taken silently."""
    cpu = torch.device("cpu")
    assert not resolve_fused_bn(cpu, "none", "auto", "fp16") and resolve_fused_bn(cpu, "none", "auto", "bf16")
    assert not make_runtime(load_config("cifar10_fast", ["train.device=cpu", "train.precision=fp16"]).train).fused_bn
    with pytest.raises(UserError, match=r"not in fp16 \(they take fp32 and bf16\); use auto or false"):
        resolve_fused_bn(cpu, "none", "true", "fp16")


def test_tracing_a_fused_training_model_sees_the_plain_modules():
    # graph passes (BN folding, int8 quantization) find conv -> BN pairs by symbolic tracing
    model = create_model("resnet20", num_classes=10).train()
    set_fused_bn(model)
    traced = torch.fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"bn1", "layer1.0.bn1", "layer3.2.bn2"} <= targets
