"""A bottleneck's 1x1 convolutions in CPU bf16 channels_last training run as matrix products
(models/pointwise.py, blocks.pointwise): the same outputs and gradients as nn.Conv2d, and the module
itself wherever a graph pass, eval mode or another layout needs it. An identity bottleneck's first
one and its shortcut are one node whose backward adds the shortcut's gradient inside the product."""
import copy

import pytest
import torch
from torch import nn

from resnetlab.models import blocks, create_model, fused_bn
from resnetlab.models.blocks import Bottleneck, PreActBottleneck, pointwise
from resnetlab.models.pointwise import pointwise_and_shortcut

from route_twins import (assert_shortcut_node_matches_autograds_sum, assert_step_matches_plain_twin,
                         shortcut_node_step, unshareable)

CL = torch.channels_last


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_pointwise_equals_the_convolution_forward_and_backward():
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1, bias=False).to(memory_format=CL).train()
    x = torch.randn(4, 24, 7, 9).bfloat16().contiguous(memory_format=CL).requires_grad_()  # as autocast makes it
    dy = torch.randn(4, 40, 7, 9)
    outs = []
    for fn in (conv, lambda t: pointwise(conv, t)):
        x.grad = conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x)
        y.float().backward(dy)
        outs.append((y, x.grad.float(), conv.weight.grad.clone()))
    assert outs[1][0].dtype == torch.bfloat16 and outs[1][0].is_contiguous(memory_format=CL)  # what the fused BN takes
    assert conv.weight.grad.dtype == torch.float32  # the parameter's own dtype, as through autocast's cast
    for name, a, b in zip(("output", "dx", "dweight"), *outs):
        torch.testing.assert_close(b.detach().float(), a.detach().float(), rtol=2e-2, atol=2e-2, msg=name)


def test_pointwise_is_a_matrix_product_only_where_it_applies():
    conv = nn.Conv2d(8, 16, 1, bias=False)
    x_cl = torch.randn(2, 8, 5, 5).bfloat16().contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "aten::convolution" not in _ops(lambda: pointwise(conv.train(), x_cl))
        assert "aten::convolution" in _ops(lambda: pointwise(conv.eval(), x_cl))  # inference: the module
        assert "aten::convolution" in _ops(lambda: pointwise(conv.train(), x_cl.contiguous()))  # NCHW
    assert "aten::convolution" in _ops(lambda: pointwise(conv.train(), x_cl.float()))  # fp32: measured a wash
    strided = nn.Conv2d(8, 16, 1, stride=2, bias=False).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "aten::convolution" in _ops(lambda: pointwise(strided, x_cl))


@pytest.mark.parametrize("block", [Bottleneck, PreActBottleneck])
def test_bottleneck_training_step_matches_the_convolutions(block, monkeypatch):
    torch.manual_seed(0)
    net = block(64, 16).to(memory_format=CL).train()
    x = torch.randn(4, 64, 8, 8).bfloat16().contiguous(memory_format=CL)
    assert_step_matches_plain_twin(net, x, "pointwise", monkeypatch)


def test_a_traced_bottleneck_network_shows_its_conv_modules():
    model = create_model("resnet50", num_classes=10).to(memory_format=CL).train()
    traced = torch.fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"layer1.0.conv1", "layer1.0.conv3", "layer4.2.conv3"} <= targets


def test_pointwise_and_shortcut_backward_adds_the_shortcuts_gradient_inside_the_product():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 16, 1, bias=False).train()
    x = torch.randn(3, 32, 5, 6).bfloat16().contiguous(memory_format=CL).requires_grad_()
    y, shortcut = pointwise_and_shortcut(conv, x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL) and torch.equal(shortcut, x)
    dy, dshortcut = torch.randn(y.shape), torch.randn(x.shape).bfloat16().contiguous(memory_format=CL)
    torch.autograd.backward([y, shortcut], [dy, dshortcut.clone()])
    w = conv.weight.detach().bfloat16().double().flatten(1)  # (16, 32), as autocast rounds it
    dy64 = dy.bfloat16().double()  # the node takes dy in bf16
    expected_dx = dshortcut.double() + torch.einsum("nkhw,kc->nchw", dy64, w)
    expected_dw = torch.einsum("nkhw,nchw->kc", dy64, x.detach().double()).view(16, 32, 1, 1)
    assert x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.double(), expected_dx, rtol=1e-2, atol=1e-2)  # one rounding to bf16
    torch.testing.assert_close(conv.weight.grad.double(), expected_dw, rtol=1e-2, atol=1e-2)
    x.grad = None  # an unused output: its gradient is None, not zeros
    y, shortcut = pointwise_and_shortcut(conv, x)
    y.float().sum().backward()
    torch.testing.assert_close(x.grad.double(), torch.einsum("nkhw,kc->nchw", torch.ones(y.shape).double(), w),
                               rtol=1e-2, atol=1e-2)


def identity_bottleneck():
    torch.manual_seed(0)
    net = Bottleneck(64, 16).to(memory_format=CL).train()
    fused_bn.set_fused_bn(net)
    return net, torch.randn(4, 64, 8, 8).bfloat16().contiguous(memory_format=CL)


@pytest.mark.skipif(fused_bn.EXTENSION.get() is None, reason="needs the fused batch-norm kernels")
def test_an_identity_bottleneck_takes_the_node_and_matches_autograds_sum(monkeypatch):
    net, x = identity_bottleneck()
    twin = copy.deepcopy(net)
    on = shortcut_node_step(net, x, "pointwise_and_shortcut", pointwise_and_shortcut, monkeypatch)
    off = shortcut_node_step(twin, x, "pointwise_and_shortcut", lambda conv, t: (pointwise(conv, t), None), monkeypatch)
    assert on[3] == off[3] == 1
    assert_shortcut_node_matches_autograds_sum(on, off)


@pytest.mark.skipif(fused_bn.EXTENSION.get() is None, reason="needs the fused batch-norm kernels")
@pytest.mark.parametrize("case", ["bn3 hooked", "bn3 frozen", "plain batch-norm", "no grad", "projection"])
def test_the_node_is_left_out_where_the_shortcuts_gradient_could_be_shared(case, monkeypatch):
    """Its backward writes into the shortcut's gradient: only the fused batch-norm's own, fresh
    gradient may be written into (an addition's backward hands one tensor to both its inputs)."""
    net, x = identity_bottleneck()
    unshareable(net, net.bn3, case)
    if case == "projection":
        net, x = Bottleneck(32, 16).to(memory_format=CL).train(), x[:, :32].contiguous(memory_format=CL)
        fused_bn.set_fused_bn(net)
    if case == "no grad":
        calls = []
        real = blocks.pointwise_and_shortcut
        monkeypatch.setattr(blocks, "pointwise_and_shortcut", lambda conv, t: calls.append(1) or real(conv, t))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
        assert calls == []
        return
    assert shortcut_node_step(net, x, "pointwise_and_shortcut", pointwise_and_shortcut, monkeypatch)[3] == 0


@pytest.mark.skipif(fused_bn.EXTENSION.get() is None, reason="needs the fused batch-norm kernels")
def test_the_fused_batch_norms_residual_gradient_is_a_tensor_of_its_own():
    """The contract pointwise_and_shortcut's in-place addition rests on: the gradient the fused
    batch-norm hands its residual shares memory with nothing else of the step."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16).train()
    x, residual = (torch.randn(4, 16, 5, 5).bfloat16().contiguous(memory_format=CL).requires_grad_() for _ in range(2))
    y = fused_bn.bn_relu(bn, x, nn.ReLU(), residual, fused=True)
    assert type(y.grad_fn).__name__.startswith("_BatchNormReLU")  # the kernel ran, not the fallback
    dy = torch.randn(y.shape).bfloat16().contiguous(memory_format=CL)
    handed = []
    residual.register_hook(handed.append)  # the very tensor backward hands the residual
    y.backward(dy)
    storages = [t.untyped_storage().data_ptr() for t in (dy, x, y, residual, x.grad)]
    assert len(handed) == 1 and handed[0].untyped_storage().data_ptr() not in storages


class DoubledConv(nn.Conv2d):
    """A convolution subclass whose forward computes something else (as weight standardisation would)."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_convolution_subclass_runs_its_own_forward(kernel):
    from resnetlab.models.conv_wgrad import conv3x3_own_wgrad
    torch.manual_seed(0)
    conv = DoubledConv(16, 16, kernel, padding=kernel // 2, bias=False).to(memory_format=CL).train()
    x = torch.randn(2, 16, 6, 6).bfloat16().contiguous(memory_format=CL).requires_grad_()
    route = (lambda t: pointwise(conv, t)) if kernel == 1 else (lambda t: conv3x3_own_wgrad(conv, t, True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(route(x), conv(x))  # the subclass's forward, doubled, not the plain matrix product
