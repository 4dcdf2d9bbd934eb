"""A stage entry's first convolution and its option-A shortcut (the CIFAR ResNets') as one autograd
node (models/shortcuts.conv_and_zero_pad), whose backward adds the shortcut's gradient into the
convolution's input gradient at every second pixel in place: the same outputs and, bit for bit, the
same gradients as autograd's sum of the two paths, in fp32 and bf16."""
import copy

import pytest
import torch
from torch import nn

from resnetlab.models import blocks, fused_bn
from resnetlab.models.blocks import BasicBlock
from resnetlab.models.shortcuts import add_at_even_pixels, conv_and_zero_pad, entry_applies

CL = torch.channels_last


def _entry_block(fused: bool = True) -> BasicBlock:
    torch.manual_seed(0)
    net = BasicBlock(16, 32, stride=2, shortcut="A").to(memory_format=CL).train()
    fused_bn.set_fused_bn(net, fused)
    return net


def _step(net, x, precision, node_on, monkeypatch):
    """(output, x's gradient, parameter gradients, nodes made) of one training step."""
    calls = []
    x = x.detach().clone().requires_grad_()
    with monkeypatch.context() as patch:
        patch.setattr(blocks.conv_direct, "applies", lambda conv, t: False)  # AVX-512 fp32: not its direct kernels
        patch.setattr(blocks, "conv_and_zero_pad", lambda conv, t, cout: calls.append(1) or (
            conv_and_zero_pad(conv, t, cout) if node_on else (conv(t), None)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = net(x.bfloat16() if precision == "bf16" else x)
        y.float().square().mean().backward()
    return y, x.grad, [p.grad for p in net.parameters()], len(calls)


@pytest.mark.parametrize("side", [8, 2])  # 2: the shortcut's gradient is 1 x 1 pixels, both layouts at once
@pytest.mark.parametrize("precision,layout", [("fp32", CL), ("bf16", CL), ("fp32", torch.contiguous_format)])
def test_the_node_gives_autograds_results_bit_for_bit(precision, layout, side, monkeypatch):
    """dx + g at the shortcut's pixels is one addition either way, so nothing rounds differently."""
    net = _entry_block().to(memory_format=layout)
    x = torch.randn(4, 16, side, side).contiguous(memory_format=layout)
    on = _step(net, x, precision, True, monkeypatch)
    off = _step(copy.deepcopy(net), x, precision, False, monkeypatch)
    assert on[3] == off[3] == 1
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])
    for p, q in zip(on[2], off[2]):
        assert torch.equal(p, q)
    assert on[1].is_contiguous(memory_format=layout)


def test_the_nodes_backward_without_the_shortcuts_gradient_or_the_convolutions():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False).to(memory_format=CL).train()
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=CL).requires_grad_()
    y, shortcut = conv_and_zero_pad(conv, x, 32)
    assert shortcut.shape == y.shape and torch.equal(shortcut[:, :16], x[:, :, ::2, ::2]) and not shortcut[:, 16:].any()
    y.sum().backward()  # the shortcut unused: the convolution's gradient alone
    expected = torch.nn.grad.conv2d_input(x.shape, conv.weight, torch.ones_like(y), stride=2, padding=1)
    torch.testing.assert_close(x.grad, expected)
    x.grad = conv.weight.grad = None
    _, shortcut = conv_and_zero_pad(conv, x, 32)
    shortcut.sum().backward()  # the convolution unused: the shortcut's gradient at every second pixel
    assert x.grad[:, :, ::2, ::2].eq(1).all() and x.grad[:, :, 1::2].eq(0).all() and x.grad[:, :, :, 1::2].eq(0).all()
    assert x.grad.is_contiguous(memory_format=CL) and conv.weight.grad is None  # no gradient, as autograd gives none


@pytest.mark.parametrize("case", ["fp32 under autocast", "fp16", "eval", "no grad", "hooked", "stride 1", "bias"])
def test_the_node_applies_only_where_it_does(case):
    conv = nn.Conv2d(16, 32, 3, stride=1 if case == "stride 1" else 2, padding=1,
                     bias=case == "bias").to(memory_format=CL).train()
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=CL)
    assert entry_applies(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), x)  # the unchanged case
    if case == "fp16":
        x = x.half()
    elif case == "eval":
        conv.eval()
    elif case == "hooked":
        conv.register_forward_hook(lambda *args: None)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "fp32 under autocast"), \
            torch.set_grad_enabled(case != "no grad"):
        assert not entry_applies(conv, x)


def test_a_hooked_shortcut_or_the_plain_batch_norm_keep_the_modules(monkeypatch):
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=CL)
    for net in (_entry_block(fused=False), _entry_block()):
        if net.fused_bn:
            net.downsample.register_forward_hook(lambda *args: None)
        assert _step(net, x, "fp32", True, monkeypatch)[3] == 0


@pytest.mark.skipif(fused_bn.EXTENSION.get() is None, reason="needs the fused batch-norm kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (3, 16, 5, 7), (2, 48, 6, 6), (2, 16, 2, 2), (2, 16, 2, 1),
                                   (1, 16, 1, 1)])
def test_the_kernels_addition_at_even_pixels_is_pytorchs_bit_for_bit(shape, dtype, monkeypatch):
    n, c, h, w = shape
    dx = torch.randn(shape).to(dtype).contiguous(memory_format=CL)
    g = torch.randn(n, 2 * c, (h + 1) // 2, (w + 1) // 2).to(dtype).contiguous(memory_format=CL)
    expected = dx.clone()
    expected[:, :, ::2, ::2] += g[:, :c]
    kernels, calls = fused_bn.EXTENSION.get(), []

    class Counting:  # the built kernels, counting the calls of this one
        def add_at_even_pixels(self, *args):
            calls.append(1)
            return kernels.add_at_even_pixels(*args)
    monkeypatch.setattr(fused_bn.EXTENSION, "get", Counting)
    got = dx.clone()
    add_at_even_pixels(got, g)
    assert calls == [1] and torch.equal(got, expected)
