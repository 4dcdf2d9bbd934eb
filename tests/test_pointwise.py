"""A bottleneck's 1x1 convolutions in CPU bf16 channels_last training run as matrix products
(models/blocks.pointwise): the same outputs and gradients as nn.Conv2d, and the module itself
wherever a graph pass, eval mode or another layout needs it."""
import pytest
import torch
from torch import nn

from resnetlab.models import create_model
from resnetlab.models.blocks import Bottleneck, PreActBottleneck, pointwise

from route_twins import assert_step_matches_plain_twin

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
