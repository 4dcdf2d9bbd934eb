"""conv(relu(bn(x))) as one node of the direct kernels (models/bn_relu_conv.py): the kernels apply the
batch-norm as they read x with its own arithmetic, so the same bits as fused batch-norm + ReLU then
the convolution, for the kernels, the node, and a whole ResNet-20 and pre-activation ResNet-110 step;
refusals; which blocks take it and where it steps aside (a stand-in kernel, everywhere)."""
import copy

import pytest
import torch
from torch import nn

from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import blocks, bn_relu_conv, conv_direct, create_model
from resnetlab.models.blocks import BasicBlock
from resnetlab.models.bn_relu_conv import bn_relu_conv3x3
from resnetlab.models.conv_direct import conv3x3_direct, packed
from resnetlab.models.fused_bn import EXTENSION, bn_relu

from route_twins import channels_last_input, fp32_twins, needs_direct_kernel, shapes_a_hook_sees

CL = torch.channels_last


def batch_norm(c: int, seed: int = 0) -> nn.BatchNorm2d:
    """A training batch-norm whose parameters and running statistics are not their defaults."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c).train()
    with torch.no_grad():
        bn.weight.uniform_(-1, 1), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    return bn


def normalised(x: torch.Tensor, bn: nn.BatchNorm2d):
    """The fused batch-norm's forward of x: (relu(bn(x)), scale, shift), bn's buffers left as they were."""
    y, _, _, scale, shift = EXTENSION.get().forward(x, None, bn.weight, bn.bias, bn.running_mean.clone(),
                                                    bn.running_var.clone(), 0.1, bn.eps)
    return y, scale, shift


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_statistics_alone_are_the_forwards_and_move_the_running_ones_alike(dtype, channels_last):
    x = torch.randn(3, 24, 5, 7).to(dtype) * 3 + 2
    x = x.contiguous(memory_format=CL) if channels_last else x
    bn = batch_norm(24).to(dtype)
    buffers = [bn.running_mean.clone(), bn.running_var.clone()], [bn.running_mean.clone(), bn.running_var.clone()]
    full = EXTENSION.get().forward(x, None, bn.weight, bn.bias, *buffers[0], 0.1, bn.eps)
    alone = EXTENSION.get().statistics(x, bn.weight, bn.bias, *buffers[1], 0.1, bn.eps)
    assert all(torch.equal(a, b) for a, b in zip(alone, full[1:]))
    assert all(torch.equal(a, b) for a, b in zip(*buffers)) and not torch.equal(buffers[0][0], bn.running_mean)


@needs_direct_kernel
@pytest.mark.parametrize("n,c,h,w", [(3, 16, 5, 23), (2, 32, 4, 15), (2, 48, 3, 7), (1, 64, 2, 9), (4, 16, 32, 32)])
def test_the_forward_kernel_reading_x_gives_the_bits_of_reading_the_batch_norms_output(n, c, h, w):
    """Widths 23, 15, 7, 9: the normalised row copy feeds every block size and tail."""
    bn = batch_norm(c)
    x = (torch.randn(n, c, h, w) * 2 + 1).contiguous(memory_format=CL)
    y, scale, shift = normalised(x, bn)
    assert (y == 0).any() and (y > 0).any()  # ReLU cut some values and let others through
    weights = packed(torch.randn(c, c, 3, 3) / (3 * c ** 0.5))
    kernels = conv_direct.KERNELS.get()
    assert torch.equal(kernels.conv3x3(x, weights, 1, None, scale, shift), kernels.conv3x3(y, weights))


@needs_direct_kernel
@pytest.mark.parametrize("n,c,h,w", [(3, 16, 5, 23), (2, 32, 4, 15), (5, 16, 1, 1), (4, 32, 16, 16)])
def test_the_weight_gradient_reading_x_gives_the_bits_of_reading_the_batch_norms_output(n, c, h, w):
    bn = batch_norm(c)
    x = (torch.randn(n, c, h, w) * 2 + 1).contiguous(memory_format=CL)
    dy = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    y, scale, shift = normalised(x, bn)
    kernels = conv_direct.KERNELS.get()
    assert torch.equal(kernels.conv3x3_weight_grad(x, dy, 1, scale, shift), kernels.conv3x3_weight_grad(y, dy))


@needs_direct_kernel
def test_the_kernels_refuse_a_normalisation_they_cannot_apply():
    kernels = conv_direct.KERNELS.get()
    x, weights = channels_last_input(16, 2, 4), packed(torch.randn(16, 16, 3, 3))
    scale, shift = torch.ones(16), torch.zeros(16)
    with pytest.raises(RuntimeError, match="scale and shift together"):
        kernels.conv3x3(x, weights, 1, None, scale, None)
    with pytest.raises(RuntimeError, match="one per input channel"):
        kernels.conv3x3(x, weights, 1, None, torch.ones(8), torch.zeros(8))
    with pytest.raises(RuntimeError, match="one per input channel"):
        kernels.conv3x3_weight_grad(x, x, 1, scale.double(), shift.double())
    with pytest.raises(RuntimeError, match="stride 1 only"):
        kernels.conv3x3(x, packed(torch.randn(32, 16, 3, 3)), 2, None, scale, shift)
    with pytest.raises(RuntimeError, match="stride 1 only"):
        kernels.conv3x3_weight_grad(x, channels_last_input(32, 2, 2), 2, scale, shift)


def two_nodes(bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv3x3_direct(conv, bn_relu(bn, x, None, fused=True))


@needs_direct_kernel
@pytest.mark.parametrize("c,hw", [(16, 9), (32, 8)])
def test_the_node_gives_the_bits_of_batch_norm_then_the_convolution(c, hw):
    """Output, every gradient, the running statistics and the batch count: bit for bit."""
    torch.manual_seed(1)
    modules = batch_norm(c), nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=CL)
    twins = copy.deepcopy(modules)
    x = (torch.randn(4, c, hw, hw) + 0.5).contiguous(memory_format=CL)
    results = []
    for (bn, conv), run in ((modules, bn_relu_conv3x3), (twins, two_nodes)):
        assert bn_relu_conv.applies(bn, conv, x)
        leaf = x.clone().requires_grad_()
        y = run(bn, conv, leaf)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y, leaf.grad, bn.weight.grad, bn.bias.grad, conv.weight.grad, *bn.buffers()])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)
    assert modules[0].num_batches_tracked.item() == 1


def test_it_steps_aside_where_either_half_would(direct_stand_in):
    bn, conv = batch_norm(16), nn.Conv2d(16, 16, 3, padding=1, bias=False)
    x = channels_last_input(16, 2, 4)
    assert bn_relu_conv.applies(bn, conv, x)
    assert not bn_relu_conv.applies(bn, conv, x.contiguous())  # NCHW: the kernels need channels_last
    assert not bn_relu_conv.applies(bn, conv, x.double())
    assert not bn_relu_conv.applies(bn, nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), x)
    assert not bn_relu_conv.applies(nn.BatchNorm2d(16, affine=False), conv, x)
    assert not bn_relu_conv.applies(copy.deepcopy(bn).eval(), conv, x)
    hooked = copy.deepcopy(bn)
    hooked.register_forward_hook(lambda *args: None)
    assert not bn_relu_conv.applies(hooked, conv, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not bn_relu_conv.applies(bn, conv, x)


@pytest.mark.parametrize("name,expected", [
    ("resnet20", 6),            # every block's second convolution at 16 and 32 channels: 3 + 3
    ("resnet56", 18),           # 9 + 9
    ("preact_resnet110", 71),   # the pre-activation blocks' second batch-norm and convolution: 18 + 18, and
                                # their first where the shortcut is the identity (at stride 1): 18 + 17
    ("preact_resnet164", 35),   # the bottlenecks' 3x3 at widths 16 and 32, but for the stage entry's stride 2: 18 + 17
    ("resnet18", 0)])           # 64 channels and more: oneDNN's
def test_every_block_whose_convolution_after_a_batch_norm_takes_the_kernels_takes_the_node(direct_stand_in, name,
                                                                                         expected):
    rt = Runtime(torch.device("cpu"), "fp32", True, fused_bn=True)
    model = prepare_model(create_model(name, num_classes=10).train(), rt)
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)).sum().backward()
    assert direct_stand_in.normalised == 2 * expected  # the forward pass and the weight gradient


def test_a_hooked_batch_norm_runs_as_its_module(direct_stand_in):
    seen = shapes_a_hook_sees(BasicBlock(16, 16), "bn1", channels_last_input(16, 2, 4))
    assert seen == [(2, 16, 4, 4)] and direct_stand_in.normalised == 0


@needs_direct_kernel
@pytest.mark.parametrize("name", ["resnet20", "preact_resnet110"])
def test_a_step_gives_the_same_bits_as_the_batch_norms_output_stored(monkeypatch, name):
    """The node changes the step's speed and memory, not its bits: training runs and resumes as before."""
    net, twin, x = fp32_twins(name)
    results = []
    for model in (net, twin):
        if model is twin:
            monkeypatch.setattr(blocks, "bn_relu_conv3x3", two_nodes)
        leaf = x.clone().requires_grad_()
        model(leaf).logsumexp(1).sum().backward()
        results.append([leaf.grad, *(p.grad for p in model.parameters()), *model.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
