"""Wide stride-2 convolutions of CPU bf16 training take matrix-product gradients
(models/strided_conv.py): the same outputs and gradients as nn.Conv2d, and the module itself
wherever the rule does not hold."""
import pytest
import torch
from torch import nn

from resnetlab.models import blocks, create_model, strided_conv as sc
from resnetlab.models.blocks import Bottleneck, PreActBottleneck

from route_twins import assert_step_matches_plain_twin

CL = torch.channels_last


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("side", [8, 7])  # odd sides: the last output pixel reads the padding
def test_the_matrix_products_equal_torch_gradients_in_float64(kernel, side):
    torch.manual_seed(0)
    x = torch.randn(3, 5, side, side + 1, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.randn(6, 5, kernel, kernel, dtype=torch.float64)
    y = nn.functional.conv2d(x, w, None, 2, kernel // 2)
    dy = torch.randn_like(y).contiguous(memory_format=CL)
    want = torch.nn.grad.conv2d_weight(x, w.shape, dy, 2, kernel // 2)
    got = sc.weight_grad(x, dy, kernel)
    assert got.shape == w.shape and got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if kernel == 1:
        dx = sc.input_grad_1x1(dy, w, x.shape)
        assert dx.shape == x.shape and dx.is_contiguous(memory_format=CL)
        torch.testing.assert_close(dx, torch.nn.grad.conv2d_input(x.shape, w, dy, 2, 0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_wide_strided_convolution_equals_the_module_forward_and_backward(kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(sc.WIDE, 32, kernel, stride=2, padding=kernel // 2, bias=False).to(memory_format=CL).train()
    x = torch.randn(2, sc.WIDE, 7, 6).bfloat16().contiguous(memory_format=CL).requires_grad_()  # as autocast makes it
    dy = torch.randn(2, 32, 4, 3)
    outs = []
    for fn in (conv, lambda t: sc.strided_conv(conv, t)):
        x.grad = conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert sc.applies(conv, x)
            y = fn(x)
        y.float().backward(dy)
        outs.append((y, x.grad.float(), conv.weight.grad.clone()))
    assert outs[1][0].dtype == torch.bfloat16 and outs[1][0].is_contiguous(memory_format=CL)
    assert conv.weight.grad.dtype == torch.float32  # the parameter's dtype, as through autocast's cast
    assert torch.equal(outs[0][0], outs[1][0])  # the forward pass is the same oneDNN convolution
    for name, a, b in zip(("dx", "dweight"), outs[0][1:], outs[1][1:]):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2 * a.abs().max().item(), msg=name)


def test_the_rule_holds_only_where_it_was_measured_faster():
    def conv(cin=sc.WIDE, kernel=1, stride=2, **kw):
        return nn.Conv2d(cin, 16, kernel, stride=stride, padding=kernel // 2, bias=False, **kw).bfloat16().train()
    x = torch.randn(1, sc.WIDE, 6, 6).bfloat16().contiguous(memory_format=CL)
    assert sc.applies(conv(), x) and sc.applies(conv(kernel=3), x)
    assert not sc.applies(conv().eval(), x)  # inference: the module
    assert not sc.applies(conv(), x.float())  # fp32: measured a wash or slower
    assert not sc.applies(conv(), x.contiguous())  # NCHW
    assert not sc.applies(conv(stride=1), x)
    assert not sc.applies(conv(kernel=5), x)
    assert not sc.applies(conv(groups=2), x)
    narrow = nn.Conv2d(sc.WIDE // 2, 16, 1, stride=2, bias=False).bfloat16().train()
    assert not sc.applies(narrow, x[:, :sc.WIDE // 2].contiguous(memory_format=CL))  # oneDNN is faster there
    with torch.no_grad():
        assert not sc.applies(conv(), x)
    # what the matrix products do not compute: a bias, other paddings, dilation, a padding mode
    assert not sc.applies(nn.Conv2d(sc.WIDE, 16, 1, stride=2, bias=True).bfloat16().train(), x)
    assert not sc.applies(nn.Conv2d(sc.WIDE, 16, 3, stride=2, padding=0, bias=False).bfloat16().train(), x)
    assert not sc.applies(nn.Conv2d(sc.WIDE, 16, 1, stride=2, padding=1, bias=False).bfloat16().train(), x)
    assert not sc.applies(conv(kernel=3, dilation=2), x)
    assert not sc.applies(conv(kernel=3, padding_mode="reflect"), x)


def test_bf16_inputs_without_autocast_need_bf16_weights():
    conv = nn.Conv2d(sc.WIDE, 16, 1, stride=2, bias=False).train()
    x = torch.randn(1, sc.WIDE, 4, 4).bfloat16().contiguous(memory_format=CL)
    assert not sc.applies(conv, x)  # fp32 weights, no autocast: the module refuses the mix, and so does the route
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sc.applies(conv, x)
    assert sc.applies(conv.bfloat16(), x)


@pytest.mark.parametrize("register", [
    lambda m: m.register_forward_hook(lambda *a: None),
    lambda m: m.register_forward_pre_hook(lambda *a: None),
    lambda m: m.register_full_backward_hook(lambda *a: None),
    lambda m: nn.modules.module.register_module_forward_hook(lambda *a: None),  # on every module
], ids=["forward", "forward-pre", "backward", "global"])
def test_a_hooked_convolution_runs_as_the_module(register):
    conv = nn.Conv2d(sc.WIDE, 16, 1, stride=2, bias=False).bfloat16().train()
    x = torch.randn(1, sc.WIDE, 4, 4).bfloat16().contiguous(memory_format=CL)
    assert sc.applies(conv, x)
    handle = register(conv)
    try:
        assert not sc.applies(conv, x)
    finally:
        handle.remove()
    assert sc.applies(conv, x)


@pytest.mark.parametrize("block", [Bottleneck, PreActBottleneck])
def test_a_wide_downsampling_bottleneck_matches_the_plain_modules(block, monkeypatch):
    torch.manual_seed(0)
    net = block(sc.WIDE, 16, stride=2).to(memory_format=CL).train()
    x = torch.randn(2, sc.WIDE, 6, 6).bfloat16().contiguous(memory_format=CL)
    calls = []
    real = sc._StridedConv.apply
    monkeypatch.setattr(sc._StridedConv, "apply", lambda *a: calls.append(a[2]) or real(*a))
    assert_step_matches_plain_twin(net, x, "strided_conv", monkeypatch)
    assert calls == [1]  # the projection, in net only (its 3x3 conv has 16 input channels: narrow)


@pytest.mark.parametrize("stride,cin", [(2, sc.WIDE), (1, 32)])  # the wide route's case; a stride-1 projection
def test_hooks_on_a_projection_fire_in_bf16_training(stride, cin):
    net = Bottleneck(cin, 16, stride=stride).to(memory_format=CL).train()
    seen = []
    net.downsample.register_full_backward_hook(lambda module, gin, gout: seen.append("downsample backward"))
    net.downsample[0].register_forward_hook(lambda module, inp, out: seen.append("conv forward"))
    x = torch.randn(2, cin, 6, 6).bfloat16().contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
    assert seen == ["conv forward", "downsample backward"]


def test_a_stride_1_projection_runs_as_its_module(monkeypatch):
    net = Bottleneck(32, 16).to(memory_format=CL).train()  # 32 -> 64 channels: a 1x1 stride-1 projection
    routed = []
    real = blocks.pointwise
    monkeypatch.setattr(blocks, "pointwise", lambda conv, t: routed.append(conv) or real(conv, t))
    x = torch.randn(2, 32, 6, 6).bfloat16().contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
    assert routed == [net.conv1, net.conv3]  # the projection keeps oneDNN's convolution (its route was not measured)


def test_a_traced_network_shows_its_projection_modules():
    model = create_model("resnet50", num_classes=10).to(memory_format=CL).train()
    traced = torch.fx.symbolic_trace(model)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"layer2.0.downsample.0", "layer2.0.downsample.1", "layer4.0.conv2"} <= targets


def test_the_route_is_deterministic_as_resume_needs():
    torch.manual_seed(0)
    net = Bottleneck(sc.WIDE, 16, stride=2).to(memory_format=CL).train()
    x = torch.randn(2, sc.WIDE, 6, 6).bfloat16().contiguous(memory_format=CL)
    grads = []
    for _ in range(2):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x).float().square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
