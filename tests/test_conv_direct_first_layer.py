"""The CIFAR ResNets' first layer (3 -> 16 channels, stride 1) in the direct kernel's forward pass
(models/conv_direct.FIRST_LAYERS), its gradients oneDNN's: the kernel held to fp64 (row tails), its
refusals, the route against the module, a whole ResNet-20 step against the modules, and which
networks take it (a stand-in kernel, everywhere)."""

import pytest
import torch
import torch.nn.functional as F

from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import conv_direct, create_model
from resnetlab.models.conv_direct import applies, conv3x3_direct, packed

from route_twins import (assert_same_fp32_step, channels_last_input, conv3x3_module, fp32_step, fp32_twins,
                         needs_direct_kernel, without_direct_kernels)

CL = torch.channels_last


@pytest.fixture
def stand_in(direct_stand_in):
    return direct_stand_in


@needs_direct_kernel
@pytest.mark.parametrize("n,h,w", [(3, 5, 23), (2, 32, 32), (2, 3, 7), (1, 1, 1)])
def test_the_kernel_computes_the_first_layer(n, h, w):
    """Widths 23, 7 and 1: the row's blocks of 16 pixels and its tails of 4, 2 and 1."""
    torch.manual_seed(0)
    x = torch.randn(n, 3, h, w).contiguous(memory_format=CL)
    weight = torch.randn(16, 3, 3, 3) / 5
    got = conv_direct.KERNELS.get().conv3x3(x, packed(weight))
    reference = F.conv2d(x.double(), weight.double(), padding=1)
    assert got.shape == (n, 16, h, w) and got.is_contiguous(memory_format=CL)
    assert ((got.double() - reference).abs().max() / reference.abs().max()).item() < 1e-6


@needs_direct_kernel
def test_the_kernel_refuses_other_first_layers_and_a_normalisation_of_three_channels():
    kernels, x = conv_direct.KERNELS.get(), channels_last_input(3, 2, 4)
    with pytest.raises(RuntimeError, match=r"must be equal \(or 3 -> 16"):
        kernels.conv3x3(x, packed(torch.randn(32, 3, 3, 3)))
    with pytest.raises(RuntimeError, match="multiple of 16 channels"):
        kernels.conv3x3(x, packed(torch.randn(16, 3, 3, 3)), 1, None, torch.ones(3), torch.zeros(3))


def test_only_a_3_to_16_stride_1_first_layer_takes_it(stand_in):
    x = channels_last_input(3, 2, 8)
    assert applies(conv3x3_module(3, 16), x)
    assert not applies(conv3x3_module(3, 32), x)
    assert not applies(conv3x3_module(3, 16, stride=2), x)
    assert not applies(conv3x3_module(16, 3), channels_last_input(16, 2, 8))


@pytest.mark.parametrize("input_grad", [False, True])
def test_the_route_gives_the_modules_outputs_and_gradients_both_gradients_by_onednn(stand_in, input_grad):
    conv = conv3x3_module(3, 16)
    x = channels_last_input(3, 4, 8).requires_grad_(input_grad)
    dy = torch.randn(4, 16, 8, 8).contiguous(memory_format=CL)
    results = []
    for route in (conv3x3_direct, lambda c, t: c(t)):
        x.grad = conv.weight.grad = None
        y = route(conv, x)
        y.backward(dy)
        results.append((y, conv.weight.grad, x.grad))
    assert stand_in.calls == 1  # the forward pass only
    assert torch.equal(results[0][0], results[1][0])  # the stand-in computes what oneDNN does
    assert torch.equal(results[0][1], results[1][1])  # oneDNN's weight gradient in both
    assert (results[0][2] is None) == (not input_grad)
    if input_grad:
        assert torch.equal(results[0][2], results[1][2])


@pytest.mark.parametrize("name,expected", [("resnet20", 1), ("preact_resnet110", 1), ("resnet18", 0)])
def test_the_cifar_networks_first_layer_takes_it_under_the_switch(stand_in, monkeypatch, name, expected):
    seen = []
    monkeypatch.setattr(stand_in, "conv3x3", lambda x, weights, *args: seen.append(x.shape[1]) or
                        type(stand_in).conv3x3(stand_in, x, weights, *args))
    for fused in (True, False):
        model = prepare_model(create_model(name, num_classes=10).train(), Runtime(torch.device("cpu"), "fp32", True,
                                                                                 fused_bn=fused))
        seen.clear()
        model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL))
        assert seen.count(3) == (expected if fused else 0)


@needs_direct_kernel
def test_a_resnet20_step_matches_the_modules(monkeypatch):
    net, twin, x = fp32_twins()
    got = fp32_step(net, x)
    without_direct_kernels(monkeypatch)
    assert_same_fp32_step(got, fp32_step(twin, x))
