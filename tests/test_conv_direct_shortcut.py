"""A basic block's first convolution and its parameter-free shortcut as one node of the direct kernels
(models/conv_direct.conv3x3_direct_and_shortcut): the kernels add the shortcut's gradient to the
input gradient as they write it (identity: all of it; option A: its first C channels at the even
pixels), held to fp64; refusals; the autograd node and blocks against the plain modules; which
blocks take it (a stand-in kernel, everywhere)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import blocks, conv_direct, create_model
from resnetlab.models.blocks import BasicBlock
from resnetlab.models.conv_direct import conv3x3_direct, conv3x3_direct_and_shortcut, packed, packed_for_strided_input_grad

from route_twins import (assert_same_fp32_step, channels_last_input, conv3x3_module, fp32_step, fp32_twins,
                         input_grad_reference, needs_direct_kernel, shapes_a_hook_sees)

CL = torch.channels_last


def fp64_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got.double() - reference).abs().max() / reference.abs().max()).item()


@needs_direct_kernel
@pytest.mark.parametrize("n,c,h,w", [(3, 16, 5, 23), (2, 32, 4, 15), (2, 48, 3, 7), (1, 64, 2, 9)])
def test_the_stride_1_kernel_adds_a_tensor_as_it_writes(n, c, h, w):
    """Widths 23, 15, 7, 9: the row's blocks of P pixels and its tails of 4, 2 and 1 all add."""
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    add = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    weight = torch.randn(c, c, 3, 3) / (3 * c ** 0.5)
    got = conv_direct.KERNELS.get().conv3x3(x, packed(weight), 1, add)
    assert fp64_error(got, F.conv2d(x.double(), weight.double(), padding=1) + add.double()) < 1e-6


@needs_direct_kernel
@pytest.mark.parametrize("n,c,h,w", [(3, 16, 6, 22), (2, 32, 4, 10), (5, 16, 2, 2), (2, 32, 16, 16)])
def test_the_strided_input_gradient_adds_option_a_shortcuts_gradient_at_the_even_pixels(n, c, h, w):
    torch.manual_seed(0)
    weight = torch.randn(2 * c, c, 3, 3) / (3 * c ** 0.5)
    dy, shortcut_grad = (torch.randn(n, 2 * c, h // 2, w // 2).contiguous(memory_format=CL) for _ in range(2))
    got = conv_direct.KERNELS.get().conv3x3_input_grad_s2(dy, packed_for_strided_input_grad(weight), shortcut_grad)
    reference = input_grad_reference(dy.double(), weight.double(), 2)
    reference[:, :, ::2, ::2] += shortcut_grad[:, :c].double()  # the channels beyond c were zero padding
    assert fp64_error(got, reference) < 1e-6


@needs_direct_kernel
def test_the_kernels_refuse_a_tensor_to_add_that_does_not_match():
    kernels, x = conv_direct.KERNELS.get(), channels_last_input(16, 2, 4)
    weights = packed(torch.randn(16, 16, 3, 3))
    for bad in (channels_last_input(16, 2, 5), x.contiguous(), x.double(), channels_last_input(32, 2, 4)):
        with pytest.raises(RuntimeError, match="the tensor to add must be an fp32 channels_last CPU tensor"):
            kernels.conv3x3(x, weights, 1, bad)
    with pytest.raises(RuntimeError, match="adds a tensor at stride 1 only"):
        kernels.conv3x3(x, packed(torch.randn(32, 16, 3, 3)), 2, channels_last_input(32, 2, 2))
    dy = channels_last_input(32, 2, 2)
    with pytest.raises(RuntimeError, match="the tensor to add"):
        kernels.conv3x3_input_grad_s2(dy, packed_for_strided_input_grad(torch.randn(32, 16, 3, 3)),
                                      channels_last_input(16, 2, 2))


def plain_conv_and_shortcut(conv, x, cout):
    """What the node stands for: the module, and x or option A's subsampled, zero-padded x."""
    if conv.stride == (1, 1):
        return conv(x), x
    return conv(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, cout - x.shape[1]))


@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (32, 32, 1), (16, 32, 2), (32, 64, 2)])
@pytest.mark.parametrize("used", ["both", "convolution only", "shortcut only"])
def test_the_node_gives_the_convolution_the_shortcut_and_their_summed_gradient(direct_stand_in, cin, cout, stride, used):
    conv = conv3x3_module(cin, cout, stride=stride)
    x = channels_last_input(cin, hw=8).requires_grad_()
    torch.manual_seed(1)
    dy, dshortcut = (torch.randn(4, cout, 8 // stride, 8 // stride).contiguous(memory_format=CL) for _ in range(2))
    results = []
    for route in (conv3x3_direct_and_shortcut, plain_conv_and_shortcut):
        x.grad = conv.weight.grad = None
        y, shortcut = route(conv, x, cout)
        outputs = {"both": [(y, dy), (shortcut, dshortcut)], "convolution only": [(y, dy)],
                   "shortcut only": [(shortcut, dshortcut)]}[used]
        torch.autograd.backward([t for t, _ in outputs], [g for _, g in outputs])
        results.append((y, shortcut, x.grad, conv.weight.grad))
    assert results[0][0].is_contiguous(memory_format=CL) and results[0][1].is_contiguous(memory_format=CL)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-5)
    if used == "shortcut only":
        assert results[0][3] is None or not results[0][3].any()
    else:
        assert torch.equal(results[0][3], results[1][3])
    assert direct_stand_in.adds == (used != "convolution only")  # the shortcut's gradient joined inside the kernel


def test_without_an_input_gradient_nothing_is_added(direct_stand_in):
    conv = conv3x3_module(16, 16)
    y, shortcut = conv3x3_direct_and_shortcut(conv, channels_last_input(16), 16)
    (y.sum() + shortcut.sum()).backward()
    assert direct_stand_in.calls == 2 and direct_stand_in.adds == 0 and conv.weight.grad is not None


@needs_direct_kernel
@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (32, 32, 1), (16, 32, 2), (32, 64, 2)])
def test_a_block_trains_to_the_plain_modules_outputs_and_gradients(cin, cout, stride):
    torch.manual_seed(0)
    block = BasicBlock(cin, cout, stride=stride, shortcut="A").to(memory_format=CL).train()
    plain = copy.deepcopy(block)
    block.fused_bn = True
    x = torch.randn(6, cin, 8, 8).contiguous(memory_format=CL)
    assert_same_fp32_step(fp32_step(block, x), fp32_step(plain, x))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet20", {}, 7),        # 3 + 3 blocks (the stage entry's option A included) + the 32 -> 64 entry
    ("resnet56", {}, 19),       # 9 + 9 + 1
    ("resnet20", {"shortcut": "B"}, 5),  # projections at the entries: 3 + 2
    ("preact_resnet110", {}, 0), ("resnet18", {}, 0)])
def test_every_block_whose_first_convolution_takes_the_kernels_adds_its_shortcut_there(direct_stand_in, name, kwargs,
                                                                                       expected):
    rt = Runtime(torch.device("cpu"), "fp32", True, fused_bn=True)
    model = prepare_model(create_model(name, num_classes=10, **kwargs).train(), rt)
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)).sum().backward()
    assert direct_stand_in.adds == expected


def test_a_hooked_shortcut_runs_as_its_module(direct_stand_in):
    seen = shapes_a_hook_sees(BasicBlock(16, 32, stride=2, shortcut="A"), "downsample", channels_last_input(16, 2, 8))
    assert seen == [(2, 32, 4, 4)] and direct_stand_in.adds == 0


@needs_direct_kernel
def test_a_resnet20_step_gives_the_same_bits_as_autograd_adding_the_gradients(monkeypatch):
    """The kernel adds the same two numbers autograd would (addition commutes), so the fused node
    changes the step's speed, not its bits: training runs and resumes exactly as before."""
    net, twin, x = fp32_twins()
    grads = []
    for model in (net, twin):
        if model is twin:
            monkeypatch.setattr(blocks, "conv3x3_direct_and_shortcut", lambda conv, t, cout: (conv3x3_direct(conv, t), None))
        model(x).logsumexp(1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
