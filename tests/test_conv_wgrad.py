"""3x3 convolutions whose weight gradient runs in resnetlab's kernel (models/conv_wgrad.py,
conv_wgrad.cpp), on AMX tiles or with AVX-512 BF16.

The kernel itself is checked against an fp64 reference on CPUs with either (the half this CPU
builds); both halves are compiled everywhere g++ knows their CPUs. The wiring (which convolutions
take the path, the autograd function, the switch) is checked everywhere, with a stand-in kernel
that computes the weight gradient as oneDNN does.
"""
import copy
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch import nn

from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import conv_wgrad, create_model
from resnetlab.models.blocks import BasicBlock, PreActBasicBlock
from resnetlab.models.conv_wgrad import applies, conv3x3_own_wgrad

from route_twins import channels_last_input, conv3x3_module, weight_grad_reference

CL = torch.channels_last
KIND = conv_wgrad.kernel_kind()
needs_kernel = pytest.mark.skipif(KIND is None, reason="the kernel runs only with AMX or AMD's AVX-512 BF16")


class StandIn:
    """The kernel's contract (bf16 channels_last x and dy in, fp32 (K, C, 3, 3) out) computed by
    oneDNN, counting its calls. `kind` is the half it stands in for."""

    def __init__(self, kind="AMX"):
        self.calls, self.kind, self.is_ready = 0, kind, True

    def ready(self):
        return self.is_ready

    def conv3x3_weight_grad(self, x, dy):
        assert x.dtype == dy.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=CL) and dy.is_contiguous(memory_format=CL)
        self.calls += 1
        return weight_grad_reference(x, dy).float()


@pytest.fixture
def stand_in(monkeypatch):
    kernels = StandIn()
    monkeypatch.setattr(conv_wgrad, "kernel_kind", lambda: kernels.kind)  # the CPU is meant to build the stand-in's half
    monkeypatch.setattr(conv_wgrad.KERNELS, "get", lambda: kernels)
    return kernels


def _input(c=32, n=4, hw=6) -> torch.Tensor:
    return channels_last_input(c, n, hw, torch.bfloat16)


@needs_kernel
def test_the_kernel_built_is_the_one_this_cpu_was_meant_to_build():
    assert conv_wgrad.KERNELS.get().kind == KIND


@needs_kernel
@pytest.mark.parametrize("n,c,k,h,w", [
    (37, 16, 48, 5, 7),    # images not a multiple of 32; 3 output-channel tiles (AMX: 2x2 and 1x3 microkernels, leftovers)
    (3, 32, 16, 4, 4),     # 18 columns (AVX-512: 6 blocks of 3 columns, each in 2 halves of 8 rows)
    (5, 16, 16, 3, 5),     # 9 columns; one image pair short
    (64, 32, 16, 8, 8),    # one output-channel tile
    (6, 128, 128, 6, 6),   # wide: the threads split the output channels
    (33, 64, 32, 1, 1),    # a single pixel: every tap but the centre reads padding
    (4, 64, 32, 57, 9),    # several bands of rows, the last one shorter
])
def test_the_kernel_equals_an_fp64_reference(n, c, k, h, w):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).bfloat16().contiguous(memory_format=CL)
    dy = torch.randn(n, k, h, w).bfloat16().contiguous(memory_format=CL)
    reference = weight_grad_reference(x.double(), dy.double())
    got = conv_wgrad.KERNELS.get().conv3x3_weight_grad(x, dy)
    assert got.dtype == torch.float32 and got.shape == (k, c, 3, 3)
    # the products of bf16 numbers are exact in fp32; only the fp32 sums round
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-4 * reference.abs().max().item())


def test_both_halves_compile_for_their_cpus(tmp_path):
    """Most machines build one half only; here both are compiled to object files (unoptimised: the
    AMX intrinsics are inline assembly, which only the assembler checks), with the flags
    -march=native gives an AMX Xeon (sapphirerapids) and a CPU with AVX-512 BF16 but no AMX
    (cooperlake: the macros Zen 4 has, for compilers that do not know znver4), in parallel."""
    from torch.utils.cpp_extension import include_paths

    halves = {"sapphirerapids": "AMX", "cooperlake": "AVX-512 BF16"}
    compiler = shutil.which("g++")

    def macros(march):
        done = subprocess.run([compiler, f"-march={march}", "-dM", "-E", "-x", "c++", "-"], input="",
                              capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    if compiler is None or any(macros(march) is None for march in halves):
        pytest.skip("no g++ that knows " + " and ".join(f"-march={march}" for march in halves))
    includes = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    checks = {}
    for march, half in halves.items():
        defined = macros(march)  # the half the source's #if picks for this CPU
        assert ("__AMX_BF16__" in defined) == (half == "AMX") and "__AVX512BF16__" in defined
        checks[march] = subprocess.Popen([compiler, "-c", "-O0", "-fPIC", "-std=c++17", f"-march={march}", "-fopenmp",
                                          "-DTORCH_EXTENSION_NAME=check", *includes, str(conv_wgrad.SOURCE),
                                          "-o", str(tmp_path / f"{march}.o")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for march, check in checks.items():
        _, errors = check.communicate(timeout=300)
        assert check.returncode == 0, f"{halves[march]} half: {errors[-3000:]}"


@needs_kernel
def test_a_block_trains_to_the_same_gradients_with_the_kernel():
    block = BasicBlock(32, 32).to(memory_format=CL).train()
    block.fused_bn = True
    plain = copy.deepcopy(block)
    plain.fused_bn = False
    x = torch.randn(40, 32, 8, 8).contiguous(memory_format=CL)
    grads = []
    for b in (block, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = b(x.bfloat16().contiguous(memory_format=CL))
        out.float().square().mean().backward()
        grads.append({name: p.grad for name, p in b.named_parameters()})
    for name in ("conv1.weight", "conv2.weight"):  # each is one bf16 rounding of the same sum
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=2e-2, atol=1e-2 * grads[1][name].abs().max().item())


def test_the_path_gives_the_convolutions_outputs_and_gradients(stand_in):
    conv = conv3x3_module()
    x = _input().requires_grad_()
    dy = torch.randn(4, 32, 6, 6)
    results = []
    for own in (True, False):
        x.grad = conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv3x3_own_wgrad(conv, x, own)
        y.float().backward(dy)
        results.append((y, x.grad, conv.weight.grad))
    assert stand_in.calls == 1  # the first pass only
    assert results[0][0].dtype == torch.bfloat16 and results[0][0].is_contiguous(memory_format=CL)
    assert results[0][2].dtype == torch.float32  # the parameter's own dtype, as through autocast's cast
    for name, a, b in zip(("output", "dx", "dweight"), *results):
        assert torch.equal(a, b), name  # the stand-in computes what oneDNN does


@pytest.mark.parametrize("change", ["stride 2", "5x5", "no padding", "bias", "dilation", "groups", "8 channels",
                                    "fp32", "NCHW", "eval", "no grad", "frozen", "switched off", "cuda"])
def test_the_path_applies_only_where_the_kernel_does(stand_in, change):
    kwargs = {"stride 2": {"stride": 2}, "5x5": {"kernel_size": 5, "padding": 2}, "no padding": {"padding": 0},
              "bias": {"bias": True}, "dilation": {"dilation": 2, "padding": 2}, "groups": {"groups": 2}}.get(change, {})
    if "kernel_size" in kwargs:
        conv = nn.Conv2d(32, 32, kwargs["kernel_size"], padding=2, bias=False).to(memory_format=CL).train()
    else:
        conv = conv3x3_module(**kwargs)
    x = _input()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(conv3x3_module(), x)  # the unchanged case does apply
    if change == "8 channels":
        conv, x = conv3x3_module(8, 8), _input(8)
    elif change == "fp32":
        x = x.float()
    elif change == "NCHW":
        x = x.contiguous()
    elif change == "eval":
        conv.eval()
    elif change == "frozen":
        conv.weight.requires_grad_(False)
    elif change == "cuda":
        x = x.to("meta")  # any other device
    with torch.set_grad_enabled(change != "no grad"), torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(conv, x) == (change == "switched off")  # the switch is conv3x3_own_wgrad's argument
        if change not in ("cuda", "no grad"):
            conv3x3_own_wgrad(conv, x.requires_grad_(), change != "switched off").float().sum().backward()
    assert stand_in.calls == 0


def test_bf16_inputs_without_autocast_need_bf16_weights(stand_in):
    conv, x = conv3x3_module(), _input()
    assert not applies(conv, x)  # fp32 weights, no autocast: the module would refuse the mix, and so does the path
    assert applies(conv.bfloat16(), x)


def test_a_hooked_convolution_runs_as_the_module(stand_in):
    conv, x = conv3x3_module().bfloat16(), _input()
    assert applies(conv, x)
    conv.register_full_backward_hook(lambda *a: None)
    assert not applies(conv, x)  # the hook must see the module


def test_without_amx_or_avx512_bf16_the_kernel_is_never_built(monkeypatch):
    monkeypatch.setattr(conv_wgrad, "kernel_kind", lambda: None)
    monkeypatch.setattr(conv_wgrad.KERNELS, "get", lambda: pytest.fail("built on a CPU without either"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(conv3x3_module(), _input())


def test_a_half_other_than_the_one_meant_for_this_cpu_is_not_used(stand_in, monkeypatch):
    """An AMX CPU whose compiler knows AVX-512 BF16 but not AMX builds the other half: unmeasured
    there, so oneDNN's gradients stay."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(conv3x3_module(), _input())
        monkeypatch.setattr(conv_wgrad, "kernel_kind", lambda: "AVX-512 BF16")  # stand-in stays "AMX"
        assert not applies(conv3x3_module(), _input())


def test_without_its_tile_registers_the_kernel_is_not_used(stand_in):
    stand_in.is_ready = False  # the OS refused the AMX tile registers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(conv3x3_module(), _input())
        conv3x3_own_wgrad(conv3x3_module(), _input().requires_grad_(), True).float().sum().backward()
    assert stand_in.calls == 0


@pytest.mark.parametrize("flags,vendor,expected", [
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "GenuineIntel", "AMX"),
    ({"avx512f", "avx512_bf16"}, "AuthenticAMD", "AVX-512 BF16"),
    ({"avx512f", "avx512_bf16"}, "GenuineIntel", None),  # bf16 ran at half the fp32 rate there: not used
    ({"avx2"}, "AuthenticAMD", None)])
def test_each_cpu_gets_the_half_measured_on_its_kind(monkeypatch, flags, vendor, expected):
    import resnetlab.cpu

    monkeypatch.setattr(resnetlab.cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(resnetlab.cpu, "cpu_vendor", lambda: vendor)
    assert conv_wgrad.kernel_kind.__wrapped__() == expected


@pytest.mark.parametrize("kind,cin,cout,expected", [("AVX-512 BF16", 64, 64, True), ("AVX-512 BF16", 64, 128, False),
                                                    ("AVX-512 BF16", 128, 64, False), ("AMX", 128, 128, True)])
def test_the_avx512_half_takes_only_the_widths_where_it_was_faster(stand_in, kind, cin, cout, expected):
    stand_in.kind = kind
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(conv3x3_module(cin, cout), _input(cin)) == expected


@pytest.mark.parametrize("name,kind,expected", [
    ("resnet20", "AMX", 16), ("preact_resnet18", "AMX", 13), ("resnet50", "AMX", 13), ("preact_resnet50", "AMX", 13),
    ("resnet20", "AVX-512 BF16", 16), ("preact_resnet18", "AVX-512 BF16", 4), ("resnet50", "AVX-512 BF16", 3)])
def test_a_training_step_sends_every_stride_1_3x3_convolution_through_it(stand_in, name, kind, expected):
    """ResNet-20: 3 stages x 3 blocks x 2 convolutions, less the two stride-2 ones: 16. ResNet-18:
    8 blocks x 2, less 3 stride-2 ones: 13. ResNet-50: one 3x3 in each of 16 blocks, less 3: 13.
    The AVX-512 half takes up to 64 channels: all of ResNet-20's (16-64), the first stage of the
    others (ResNet-18: 2 blocks x 2; ResNet-50: 3 blocks x 1)."""
    stand_in.kind = kind
    rt = Runtime(torch.device("cpu"), "bf16", True, fused_bn=True)
    model = prepare_model(create_model(name, num_classes=10).train(), rt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(4, 3, 32, 32).contiguous(memory_format=CL)).float().sum()
    loss.backward()
    assert stand_in.calls == expected
    stand_in.calls = 0
    prepare_model(model, Runtime(torch.device("cpu"), "bf16", True, fused_bn=False))  # the switch turns it off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 3, 32, 32).contiguous(memory_format=CL)).float().sum().backward()
    assert stand_in.calls == 0


def test_a_traced_network_shows_its_convolution_modules(stand_in):
    block = PreActBasicBlock(32, 32).train()
    block.fused_bn = True
    graph = torch.fx.symbolic_trace(block).graph
    assert {node.target for node in graph.nodes if node.op == "call_module"} >= {"conv1", "conv2"}
