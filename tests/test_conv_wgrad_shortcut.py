"""A basic block's first 3x3 convolution (weight gradient in resnetlab's kernel, models/conv_wgrad.py)
and its identity shortcut as one autograd node, whose backward has oneDNN add the convolution's input
gradient into the shortcut's gradient as it writes it (conv3x3_own_wgrad_and_shortcut). Checked
everywhere with a stand-in for the kernel (the input gradient is oneDNN's on every CPU), against an
fp64 reference and against the same block with autograd adding the two gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.models import blocks, conv_wgrad, fused_bn
from resnetlab.models.blocks import BasicBlock
from resnetlab.models.conv_wgrad import conv3x3_own_wgrad, conv3x3_own_wgrad_and_shortcut, input_grad

from route_twins import (assert_shortcut_node_matches_autograds_sum, conv3x3_module, shortcut_node_step,
                         unshareable, weight_grad_reference)

CL = torch.channels_last
needs_fused_bn = pytest.mark.skipif(fused_bn.EXTENSION.get() is None, reason="needs the fused batch-norm kernels")


class StandIn:
    """The weight-gradient kernel's contract computed by oneDNN."""

    kind = "AMX"

    def ready(self):
        return True

    def conv3x3_weight_grad(self, x, dy):
        return weight_grad_reference(x, dy).float()


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    monkeypatch.setattr(conv_wgrad, "kernel_kind", lambda: "AMX")
    monkeypatch.setattr(conv_wgrad.KERNELS, "get", lambda: StandIn())


def _bf16(*shape) -> torch.Tensor:
    return torch.randn(*shape).bfloat16().contiguous(memory_format=CL)


@pytest.mark.skipif(not conv_wgrad._fused_addition_built(), reason="oneDNN does not run bf16 on this CPU")
@pytest.mark.parametrize("case", ["one call", "no operator", "wide"])
def test_input_grad_with_an_addition_equals_the_fp64_sum_written_in_place(case, monkeypatch):
    """With the operator: oneDNN's convolution of dy with the flipped weights plus `add`, rounded
    once; without it (another PyTorch build) or wider than 128 channels: oneDNN's backward pass,
    added in place."""
    monkeypatch.setattr(conv_wgrad, "_fused_addition", lambda: case != "no operator")
    fused_addition = case == "one call"
    torch.manual_seed(0)
    k, c = (144, 32) if case == "wide" else (48, 32)
    dy, x, add = _bf16(3, k, 7, 5), _bf16(3, c, 7, 5), _bf16(3, c, 7, 5)
    weight = (torch.randn(k, c, 3, 3) * 0.1).bfloat16().contiguous(memory_format=CL)
    dx = F.conv_transpose2d(dy.double(), weight.double(), padding=1)
    expected = add.double() + dx
    handed = add.clone()
    got = input_grad(dy, x, weight, handed)
    assert got.data_ptr() == handed.data_ptr() and got.is_contiguous(memory_format=CL)  # written into `add`
    # bf16 keeps 8 significant bits: one rounding of the sum (the products of bf16 numbers are exact
    # in fp32), and without the operator one more, of dx before the addition
    bound = 2 ** -8 * (expected.abs() + (0 if fused_addition else dx.abs())) + 1e-4 * expected.abs().max()
    assert ((got.double() - expected).abs() <= bound).all()
    separate = add + F.conv_transpose2d(dy, weight, padding=1)  # two roundings: differs in some of the values
    assert torch.equal(got, separate) == (not fused_addition)
    assert torch.equal(input_grad(dy, x, weight), F.conv_transpose2d(dy, weight, padding=1))  # no addition: oneDNN's


def test_the_node_gives_the_convolution_and_the_shortcut_with_their_gradients_summed():
    conv = conv3x3_module(16, 16).bfloat16()
    x = _bf16(4, 16, 6, 6).requires_grad_()
    y, shortcut = conv3x3_own_wgrad_and_shortcut(conv, x)
    assert torch.equal(y, F.conv2d(x, conv.weight, padding=1)) and torch.equal(shortcut, x)
    dy, dshortcut = _bf16(*y.shape), _bf16(*x.shape)
    torch.autograd.backward([y, shortcut], [dy, dshortcut.clone()])
    expected_dx = dshortcut.double() + F.conv_transpose2d(dy.double(), conv.weight.double(), padding=1)
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.double(), expected_dx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(conv.weight.grad, weight_grad_reference(x.detach(), dy))
    x.grad = conv.weight.grad = None  # an unused output: its gradient is None, not zeros
    y, shortcut = conv3x3_own_wgrad_and_shortcut(conv, x)
    y.float().sum().backward()
    torch.testing.assert_close(x.grad, F.conv_transpose2d(torch.ones_like(y), conv.weight, padding=1))


def identity_block():
    torch.manual_seed(0)
    net = BasicBlock(16, 16).to(memory_format=CL).train()
    fused_bn.set_fused_bn(net)
    return net, _bf16(4, 16, 8, 8)


@needs_fused_bn
def test_an_identity_basic_block_takes_the_node_and_matches_autograds_sum(monkeypatch):
    net, x = identity_block()
    twin = copy.deepcopy(net)
    node = "conv3x3_own_wgrad_and_shortcut"
    on = shortcut_node_step(net, x, node, conv3x3_own_wgrad_and_shortcut, monkeypatch)
    off = shortcut_node_step(twin, x, node, lambda conv, t: (conv3x3_own_wgrad(conv, t, True), None), monkeypatch)
    assert on[3] == off[3] == 1
    assert torch.equal(on[0], off[0])  # the forward pass is the same convolution
    assert_shortcut_node_matches_autograds_sum(on, off)


@needs_fused_bn
@pytest.mark.parametrize("case", ["bn2 hooked", "bn2 frozen", "plain batch-norm", "no grad", "projection", "fp32"])
def test_the_node_is_left_out_where_the_shortcuts_gradient_could_be_shared(case, monkeypatch):
    """Its backward writes into the shortcut's gradient: only the fused batch-norm's own, fresh
    gradient may be written into (an addition's backward hands one tensor to both its inputs)."""
    net, x = identity_block()
    unshareable(net, net.bn2, case)
    if case == "projection":  # a shortcut that is not x itself
        net.downsample = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)).to(memory_format=CL)
    calls = []
    monkeypatch.setattr(blocks, "conv3x3_own_wgrad_and_shortcut", lambda conv, t: calls.append(1))
    with torch.set_grad_enabled(case != "no grad"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case != "fp32"):
        net(x.float() if case == "fp32" else x)
    assert calls == []


@pytest.mark.parametrize("node", ["conv", "conv and shortcut"])
def test_a_parameter_gets_the_kernels_fp32_sum_in_its_own_dtype(node, monkeypatch):
    """Under autocast (fp32 parameters) the kernel's fp32 weight gradient is not rounded to bf16 on
    its way; bf16 parameters get it rounded once."""
    class Precise(StandIn):
        def conv3x3_weight_grad(self, x, dy):
            return weight_grad_reference(x.double(), dy.double()).float()
    monkeypatch.setattr(conv_wgrad.KERNELS, "get", lambda: Precise())
    x = _bf16(4, 16, 6, 6)
    for dtype in (torch.float32, torch.bfloat16):
        conv = conv3x3_module(16, 16).to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv3x3_own_wgrad(conv, x, True) if node == "conv" else conv3x3_own_wgrad_and_shortcut(conv, x)[0]
        dy = torch.randn(y.shape).bfloat16().contiguous(memory_format=CL)
        y.backward(dy)
        expected = weight_grad_reference(x.double(), dy.double()).float()
        assert conv.weight.grad.dtype == dtype
        assert torch.equal(conv.weight.grad, expected.to(dtype))
        if dtype == torch.float32:
            assert not torch.equal(expected, expected.bfloat16().float())  # so rounding would have shown
