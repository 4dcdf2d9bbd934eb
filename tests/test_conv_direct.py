"""fp32 3x3 convolutions in resnetlab's direct kernels (models/conv_direct.py, conv_direct.cpp), forward
pass, input gradient and weight gradient, on CPUs with AVX-512 whose training runs in fp32.

The kernel itself is checked against an fp64 reference where this CPU builds it; the source is
compiled with and without AVX-512 everywhere g++ knows those CPUs. The wiring (which convolutions
take the path, the autograd function, the switch) is checked everywhere, with a stand-in kernel
that computes the same contract with oneDNN's convolution.
"""
import copy
import shutil
import subprocess
import sysconfig

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import conv_direct, create_model
from resnetlab.models.blocks import BasicBlock, PreActBasicBlock
from resnetlab.models.conv_direct import applies, conv3x3_direct, packed, packed_for_input_grad

from route_twins import (assert_same_fp32_step, channels_last_input, conv3x3_module, fp32_step, needs_direct_kernel,
                         unpacked, weight_grad_reference, without_direct_kernels)

CL = torch.channels_last
needs_kernel = needs_direct_kernel


@pytest.fixture
def stand_in(direct_stand_in):
    return direct_stand_in


def test_packing_puts_each_taps_output_channels_in_a_row():
    weight = torch.randn(48, 16, 3, 3)
    weights = packed(weight)
    assert weights.shape == (9, 16, 48) and weights.is_contiguous()
    assert torch.equal(weights[2 * 3 + 1, 5], weight[:, 5, 2, 1])  # tap (dy 2, dx 1), input channel 5
    assert torch.equal(unpacked(weights), weight)


def test_the_input_gradient_is_the_convolution_with_transposed_flipped_weights():
    """The identity the kernel's backward rests on, in fp64 with PyTorch's own operators."""
    torch.manual_seed(0)
    x, dy, weight = torch.randn(2, 8, 5, 7).double(), torch.randn(2, 12, 5, 7).double(), torch.randn(12, 8, 3, 3).double()
    dx = torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                             [True, False, False])[0]
    torch.testing.assert_close(F.conv2d(dy, unpacked(packed_for_input_grad(weight)), None, 1, 1), dx)


@needs_kernel
@pytest.mark.parametrize("n,c,h,w", [
    (5, 16, 7, 9),     # 9 columns, fewer than a block of 16: tails of 4, 4 and 1
    (3, 32, 1, 1),     # a single pixel: every tap but the centre reads the border
    (2, 48, 3, 13),    # 13 = 3 x 4 + 1
    (4, 64, 8, 8),
    (1, 16, 33, 35),   # 35 = 2 x 16 + 2 + 1
    (7, 32, 16, 16),   # more images than threads, unevenly split
    (2, 32, 5, 15),    # 15 = 8 + 4 + 2 + 1: every tail block at 32 channels
])
def test_the_kernel_equals_an_fp64_reference(n, c, h, w):
    torch.manual_seed(0)
    x, dy = torch.randn(n, c, h, w).contiguous(memory_format=CL), torch.randn(n, c, h, w).contiguous(memory_format=CL)
    weight = torch.randn(c, c, 3, 3) / (3 * c ** 0.5)
    kernel = conv_direct.KERNELS.get()
    forward = kernel.conv3x3(x, packed(weight))
    input_grad = kernel.conv3x3(dy, packed_for_input_grad(weight))
    dx = torch.ops.aten.convolution_backward(dy.double(), x.double(), weight.double(), None, [1, 1], [1, 1], [1, 1],
                                             False, [0, 0], 1, [True, False, False])[0]
    for got, reference in ((forward, F.conv2d(x.double(), weight.double(), None, 1, 1)), (input_grad, dx)):
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=CL) and got.shape == (n, c, h, w)
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("n,c,k,h,w", [
    (5, 16, 16, 7, 9),    # 16 output channels: blocks of 8 input channels; odd sides
    (3, 32, 32, 1, 1),    # a single pixel: only the centre tap sees anything
    (2, 8, 16, 3, 13),    # 8 input channels: one block of 8
    (7, 32, 16, 16, 16),  # more images than threads, unevenly split
    (3, 4, 32, 5, 2),     # 32 output channels: blocks of 4 input channels
    (1, 16, 32, 1, 3),    # one row: the vertical taps 0 and 2 see only the border
])
def test_the_weight_gradient_kernel_equals_an_fp64_reference(n, c, k, h, w):
    torch.manual_seed(0)
    x, dy = torch.randn(n, c, h, w).contiguous(memory_format=CL), torch.randn(n, k, h, w).contiguous(memory_format=CL)
    got = conv_direct.KERNELS.get().conv3x3_weight_grad(x, dy)
    reference = weight_grad_reference(x.double(), dy.double())
    assert got.dtype == torch.float32 and got.shape == (k, c, 3, 3) and got.is_contiguous()
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())


@needs_kernel
def test_the_kernel_of_no_pixels_reads_nothing():
    x = torch.empty(3, 16, 0, 5).contiguous(memory_format=CL)
    assert conv_direct.KERNELS.get().conv3x3(x, packed(torch.randn(16, 16, 3, 3))).shape == (3, 16, 0, 5)


@needs_kernel
def test_the_weight_gradient_of_no_pixels_is_zero():
    x = torch.empty(0, 16, 4, 4).contiguous(memory_format=CL)
    assert torch.equal(conv_direct.KERNELS.get().conv3x3_weight_grad(x, x), torch.zeros(16, 16, 3, 3))


@needs_kernel
def test_the_weight_gradient_is_the_same_bits_every_time():
    """Its threads' sums are added in a fixed order: a resumed run computes what the first one did."""
    x, dy = channels_last_input(16, n=9, hw=8), channels_last_input(16, n=9, hw=8)
    first = conv_direct.KERNELS.get().conv3x3_weight_grad(x, dy)
    assert all(torch.equal(conv_direct.KERNELS.get().conv3x3_weight_grad(x, dy), first) for _ in range(3))


@needs_kernel
def test_the_kernel_does_not_depend_on_the_thread_count():
    """Each thread writes whole images: the forward pass and input gradient are the same bits with one
    thread or two (the weight gradient is repeatable at a given thread count: the next test)."""
    x, weights = channels_last_input(16, n=5, hw=9), packed(torch.randn(16, 16, 3, 3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = conv_direct.KERNELS.get().conv3x3(x, weights)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(conv_direct.KERNELS.get().conv3x3(x, weights), one)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("x,weights,message", [
    (torch.randn(2, 16, 4, 4), torch.randn(9, 16, 16), "channels_last"),
    (torch.randn(2, 16, 4, 4).double().contiguous(memory_format=CL), torch.randn(9, 16, 16), "fp32"),
    (channels_last_input(16), torch.randn(9, 16, 32), "must be equal"),
    (channels_last_input(8), torch.randn(9, 8, 8), "16, 32, 48 or 64"),
    (channels_last_input(16), torch.randn(3, 16, 16), r"\(9, Cin, Cout\)"),
    (channels_last_input(16).to("meta"), torch.randn(9, 16, 16), "CPU tensors"),
])
def test_the_kernel_refuses_what_it_cannot_compute(x, weights, message):
    with pytest.raises(RuntimeError, match=message):
        conv_direct.KERNELS.get().conv3x3(x, weights)


@needs_kernel
@pytest.mark.parametrize("x,dy,message", [
    (torch.randn(2, 16, 4, 4), channels_last_input(16, 2, 4), "channels_last"),
    (channels_last_input(16, 2, 4), channels_last_input(16, 2, 4, torch.float64), "fp32"),
    (channels_last_input(16, 2, 4), channels_last_input(16, 2, 5), "x's images, and its pixels"),
    (channels_last_input(16, 2, 4), channels_last_input(64, 2, 4), "16 output channels"),
    (channels_last_input(12, 2, 4), channels_last_input(16, 2, 4), "multiple of 8"),
])
def test_the_weight_gradient_kernel_refuses_what_it_cannot_compute(x, dy, message):
    with pytest.raises(RuntimeError, match=message):
        conv_direct.KERNELS.get().conv3x3_weight_grad(x, dy)


def test_the_source_compiles_with_and_without_avx512(tmp_path):
    """This CPU builds one form; both are compiled here to object files (unoptimised, in parallel),
    with the flags -march=native gives an Ice Lake Xeon and an AVX2-only CPU (haswell)."""
    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++")
    includes = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    checks = {march: subprocess.Popen([compiler, "-c", "-O0", "-fPIC", "-std=c++17", f"-march={march}", "-fopenmp",
                                       "-DTORCH_EXTENSION_NAME=check", *includes, str(conv_direct.SOURCE),
                                       "-o", str(tmp_path / f"{march}.o")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for march in ("icelake-server", "haswell")}
    for march, check in checks.items():
        _, errors = check.communicate(timeout=300)
        assert check.returncode == 0, f"-march={march}: {errors[-3000:]}"


@needs_kernel
@pytest.mark.parametrize("make, width", [(BasicBlock, 16), (BasicBlock, 32), (PreActBasicBlock, 16)])
def test_a_block_trains_to_the_same_outputs_and_gradients_with_the_kernel(make, width, monkeypatch):
    # Seeded: with other random numbers a pre-activation within rounding of 0 can take the other side of a
    # ReLU in one of the two summation orders, and that gradient differs by more than rounding.
    torch.manual_seed(0)
    block = make(width, width).to(memory_format=CL).train()
    block.fused_bn = True
    twin = copy.deepcopy(block)
    x = torch.randn(6, block.conv1.in_channels, 8, 8).contiguous(memory_format=CL)
    assert applies(block.conv1, x)
    got = fp32_step(block, x)
    without_direct_kernels(monkeypatch)
    assert_same_fp32_step(got, fp32_step(twin, x))


@pytest.mark.parametrize("cin,cout,stride", [(32, 32, 1), (16, 32, 2)])
def test_the_path_gives_the_convolutions_outputs_and_gradients(stand_in, cin, cout, stride):
    conv = conv3x3_module(cin, cout, stride=stride)
    x = channels_last_input(cin, hw=8).requires_grad_()
    dy = torch.randn(4, cout, 8 // stride, 8 // stride).contiguous(memory_format=CL)
    results = []
    for route in (conv3x3_direct, lambda c, t: c(t)):
        x.grad = conv.weight.grad = None
        y = route(conv, x)
        y.backward(dy)
        results.append((y, x.grad, conv.weight.grad))
    assert stand_in.calls == 3  # forward, input gradient and weight gradient, the first pass only
    assert results[0][0].is_contiguous(memory_format=CL)
    assert torch.equal(results[0][0], results[1][0])  # the stand-in computes what oneDNN does
    assert torch.equal(results[0][2], results[1][2])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


def test_an_input_that_needs_no_gradient_costs_no_input_gradient(stand_in):
    conv = conv3x3_module()
    conv3x3_direct(conv, channels_last_input()).sum().backward()
    assert stand_in.calls == 2 and conv.weight.grad is not None  # forward and weight gradient


@pytest.mark.parametrize("change", ["stride 2", "5x5", "no padding", "bias", "dilation", "groups", "8 channels",
                                    "64 channels", "16 to 32", "bf16 autocast", "fp16 autocast", "bf16", "fp64", "NCHW",
                                    "eval", "hooked", "meta", "reflect padding", "subclass"])
def test_the_path_applies_only_where_the_kernel_does(stand_in, change):
    kwargs = {"stride 2": {"stride": 2}, "no padding": {"padding": 0}, "bias": {"bias": True},
              "dilation": {"dilation": 2, "padding": 2}, "groups": {"groups": 2}}.get(change, {})
    conv, x = conv3x3_module(**kwargs), channels_last_input()
    assert applies(conv3x3_module(), x)  # the unchanged case does apply
    autocast = torch.autocast("cpu", dtype=torch.float16 if change == "fp16 autocast" else torch.bfloat16,
                              enabled=change.endswith("autocast"))
    if change == "5x5":
        conv = nn.Conv2d(32, 32, 5, padding=2, bias=False).to(memory_format=CL).train()
    elif change in ("8 channels", "64 channels"):
        width = int(change.split()[0])
        conv, x = conv3x3_module(width, width), channels_last_input(width)
    elif change == "16 to 32":
        conv, x = conv3x3_module(16, 32), channels_last_input(16)
    elif change == "bf16":
        conv, x = conv.bfloat16(), x.bfloat16()
    elif change == "fp64":
        conv, x = conv.double(), x.double()
    elif change == "NCHW":
        x = x.contiguous()
    elif change == "eval":
        conv.eval()
    elif change == "hooked":
        conv.register_forward_hook(lambda *a: None)
    elif change == "meta":
        x = x.to("meta")  # a device other than the CPU
    elif change == "reflect padding":
        conv.padding_mode = "reflect"
    elif change == "subclass":  # its forward may differ (QAT's fake quantisation, weight standardisation)
        conv.__class__ = type("Subclass", (nn.Conv2d,), {})
    with autocast:
        assert not applies(conv, x)
        if change != "meta":
            conv3x3_direct(conv, x.requires_grad_()).float().sum().backward()
    assert stand_in.calls == 0


def test_the_switch_off_sends_every_convolution_to_the_module(stand_in):
    block = BasicBlock(32, 32).to(memory_format=CL).train()
    block.fused_bn = False
    block(channels_last_input()).sum().backward()
    assert stand_in.calls == 0
    block.fused_bn = True
    block(channels_last_input()).sum().backward()
    assert stand_in.calls == 5  # two forward passes, two weight gradients, conv2's input gradient (x needs none)


@pytest.mark.parametrize("flags,vendor,expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, "GenuineIntel", "AVX-512"),  # Ice Lake: training runs fp32
    ({"avx512f", "avx512_bf16"}, "GenuineIntel", "AVX-512"),  # bf16 there ran at half the fp32 rate: fp32
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "GenuineIntel", None),  # AMX: training runs bf16
    ({"avx512f", "avx512_bf16"}, "AuthenticAMD", None),  # Zen 4: bf16
    ({"avx2", "fma"}, "AuthenticAMD", None)])
def test_the_kernel_is_meant_for_avx512_cpus_whose_training_runs_fp32(monkeypatch, flags, vendor, expected):
    import resnetlab.cpu

    monkeypatch.setattr(resnetlab.cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(resnetlab.cpu, "cpu_vendor", lambda: vendor)
    assert conv_direct.kernel_kind.__wrapped__() == expected


def test_without_avx512_the_kernel_is_never_built(monkeypatch):
    monkeypatch.setattr(conv_direct, "kernel_kind", lambda: None)
    monkeypatch.setattr(conv_direct.KERNELS, "get", lambda: pytest.fail("built on a CPU it is not meant for"))
    assert not applies(conv3x3_module(), channels_last_input())


def test_a_build_without_its_avx512_code_is_not_used(stand_in):
    stand_in.built = False  # a compiler that did not target AVX-512
    assert not applies(conv3x3_module(), channels_last_input())


@pytest.mark.parametrize("name,expected,first", [("resnet20", 13, 1), ("resnet56", 37, 1), ("preact_resnet18", 0, 0),
                                                 ("resnet50", 0, 0)])
def test_a_training_step_sends_every_convolution_the_kernels_have_through_them(stand_in, name, expected, first):
    """ResNet-20: 3 blocks x 2 convolutions of 16 channels, and of 32 less the stride-2 one: 6 + 5,
    and the two stride-2 stage entries (16 -> 32, 32 -> 64); and its first layer's forward pass.
    ResNet-56: 9 blocks each, 18 + 17 + 2, and the first layer. ResNet-18 and ResNet-50: the
    narrowest 3x3s have 64 channels, their stride-2 ones 64 or more in, their first layer is 7x7."""
    rt = Runtime(torch.device("cpu"), "fp32", True, fused_bn=True)
    model = prepare_model(create_model(name, num_classes=10).train(), rt)
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)).sum().backward()
    assert stand_in.calls == 3 * expected + first  # each forward, input gradient and weight gradient
    stand_in.calls = 0
    prepare_model(model, Runtime(torch.device("cpu"), "fp32", True, fused_bn=False))  # the switch turns it off
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)).sum().backward()
    assert stand_in.calls == 0


def test_a_traced_network_shows_its_convolution_modules(stand_in):
    block = PreActBasicBlock(32, 32).to(memory_format=CL).train()
    block.fused_bn = True
    graph = torch.fx.symbolic_trace(block).graph
    assert {node.target for node in graph.nodes if node.op == "call_module"} >= {"conv1", "conv2"}
