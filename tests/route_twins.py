"""A block's bf16 training step through one of resnetlab's convolution routes (models/blocks.convolve)
against a twin whose route is replaced by the plain module, and the convolutions and inputs the
route tests build, and a stand-in for the direct kernels."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.models import blocks, conv_direct
from resnetlab.models.fused_bn import bn_relu


def conv3x3_module(cin: int = 32, cout: int = 32, **kwargs) -> nn.Conv2d:
    """A training nn.Conv2d, 3x3, padding 1 and no bias unless kwargs say otherwise, channels_last,
    with weights drawn from seed 0."""
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, 3, padding=kwargs.pop("padding", 1), bias=kwargs.pop("bias", False),
                     **kwargs).to(memory_format=torch.channels_last).train()


def channels_last_input(c: int = 32, n: int = 4, hw: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)


def weight_grad_reference(x: torch.Tensor, dy: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """oneDNN's weight gradient of a 3x3 padding-1 convolution (what nn.Conv2d's backward computes),
    in x's dtype."""
    weight = torch.zeros(dy.shape[1], x.shape[1], 3, 3, dtype=x.dtype)
    return torch.ops.aten.convolution_backward(dy, x, weight, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]


def input_grad_reference(dy: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """oneDNN's input gradient of a 3x3 padding-1 convolution of images stride times dy's sides."""
    n, _, h, w = dy.shape
    x = torch.empty(n, weight.shape[1], h * stride, w * stride, dtype=dy.dtype)
    return torch.ops.aten.convolution_backward(dy, x, weight, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0]


def unpacked(weights: torch.Tensor) -> torch.Tensor:
    """(9, C_in, C_out) -> (C_out, C_in, 3, 3): the inverse of conv_direct.packed."""
    return weights.reshape(3, 3, weights.shape[1], weights.shape[2]).permute(3, 2, 0, 1)


class DirectStandIn:
    """The direct kernels' contracts (models/conv_direct.py: fp32 channels_last tensors, weights
    packed as it packs them) computed by oneDNN, counting the calls."""

    built = True

    def __init__(self):
        self.calls = 0
        self.adds = 0  # calls that added a shortcut's gradient
        self.normalised = 0  # calls that read a batch-norm's input and applied it (bn_relu_conv)

    def normalise(self, x, stride, scale, shift):
        """relu(x * scale + shift) per channel, where the caller gave a batch-norm's scale and shift."""
        assert (scale is None) == (shift is None)
        if scale is None:
            return x
        assert stride == 1 and scale.shape == shift.shape == (x.shape[1],) and scale.dtype == torch.float32
        self.normalised += 1
        return torch.relu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)

    def conv3x3(self, x, weights, stride=1, add=None, scale=None, shift=None):
        assert x.dtype == weights.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert weights.shape[:2] == (9, x.shape[1]) and weights.is_contiguous()
        # C -> C at stride 1, C -> 2C at stride 2, or a first layer's 3 -> 16 (conv_direct.FIRST_LAYERS)
        assert weights.shape[2] == x.shape[1] * stride or (stride == 1 and (x.shape[1], weights.shape[2]) == (3, 16))
        self.calls += 1
        x = self.normalise(x, stride, scale, shift)
        weight = unpacked(weights).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, None, stride, 1).contiguous(memory_format=torch.channels_last)
        if add is not None:
            assert stride == 1 and add.shape == y.shape and add.is_contiguous(memory_format=torch.channels_last)
            self.adds += 1
            y += add
        return y

    def conv3x3_input_grad_s2(self, dy, weights, shortcut_grad=None):  # weights (9, K, C): per tap, output channel k's row of inputs
        assert dy.dtype == weights.dtype == torch.float32 and dy.is_contiguous(memory_format=torch.channels_last)
        assert weights.shape[:2] == (9, dy.shape[1]) and weights.is_contiguous()
        self.calls += 1
        weight = weights.reshape(3, 3, *weights.shape[1:]).permute(2, 3, 0, 1)
        dx = input_grad_reference(dy, weight, 2).contiguous(memory_format=torch.channels_last)
        if shortcut_grad is not None:  # option A's shortcut: x's channels at its even pixels
            assert shortcut_grad.shape == dy.shape and shortcut_grad.is_contiguous(memory_format=torch.channels_last)
            self.adds += 1
            dx[:, :, ::2, ::2] += shortcut_grad[:, :dx.shape[1]]
        return dx

    def conv3x3_weight_grad(self, x, dy, stride=1, scale=None, shift=None):
        assert x.dtype == dy.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last) and dy.is_contiguous(memory_format=torch.channels_last)
        self.calls += 1
        return weight_grad_reference(self.normalise(x, stride, scale, shift), dy, stride)


def assert_step_matches_plain_twin(net: nn.Module, x: torch.Tensor, route: str, monkeypatch) -> None:
    """One autocast bf16 forward + backward of `net` and of a copy run with blocks.<route> replaced
    by the module itself: the same outputs and parameter gradients, within bf16's tolerance."""
    twin = copy.deepcopy(net)
    ys = []
    for model in (net, twin):
        if model is twin:
            monkeypatch.setattr(blocks, route, lambda conv, t: conv(t))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        ys.append(y.float())
    torch.testing.assert_close(ys[0], ys[1], rtol=2e-2, atol=2e-2)
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        scale = q.grad.abs().max().item()
        assert (p.grad - q.grad).abs().max().item() <= 3e-2 * scale, name


def without_direct_kernels(monkeypatch) -> None:
    """blocks' direct-kernel routes replaced by the modules: every convolution by itself, and the
    shortcut made and its gradient added by autograd, as without the kernels."""
    monkeypatch.setattr(blocks, "conv3x3_direct", lambda conv, t: conv(t))
    monkeypatch.setattr(blocks, "conv3x3_direct_and_shortcut", lambda conv, t, cout: (conv(t), None))
    monkeypatch.setattr(blocks, "bn_relu_conv3x3", lambda bn, conv, t: conv(bn_relu(bn, t, None, fused=True)))


def shapes_a_hook_sees(block: nn.Module, name: str, x: torch.Tensor) -> list:
    """Forward + backward of `block` in training with resnetlab's kernels switched on and a forward
    hook on its submodule `name`: the output shapes the hook saw (a hooked module must run itself)."""
    block = block.to(memory_format=torch.channels_last).train()
    block.fused_bn = True
    seen = []
    block.get_submodule(name).register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    block(x.requires_grad_()).sum().backward()
    return seen


def fp32_twins(name: str = "resnet20") -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A training fp32 network prepared as training runs it (resnetlab's kernels on where this CPU
    has them), a deep copy to run with a route switched off, and a batch of 8 channels_last images."""
    from resnetlab.engine.runtime import Runtime, prepare_model
    from resnetlab.models import create_model

    torch.manual_seed(0)
    net = prepare_model(create_model(name, num_classes=10).train(),
                        Runtime(torch.device("cpu"), "fp32", True, fused_bn=True))
    return net, copy.deepcopy(net), torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)


def fp32_step(model: nn.Module, x: torch.Tensor):
    """One forward + backward of `model` on a copy of x: (output, x's gradient, parameter gradients by name)."""
    x = x.clone().requires_grad_()
    y = model(x)
    y.square().mean().backward()
    return y, x.grad, {name: p.grad for name, p in model.named_parameters()}


def assert_same_fp32_step(got, expected) -> None:
    """Two fp32_step results equal within fp32 rounding (the kernels sum in another order)."""
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-3, atol=1e-4 * expected[1].abs().max().item())
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())


needs_direct_kernel = pytest.mark.skipif(not conv_direct.available(),
                                         reason="the kernel runs only on CPUs with AVX-512 whose training runs in fp32")


def shortcut_node_step(net: nn.Module, x: torch.Tensor, node: str, stand_in, monkeypatch):
    """(output, input gradient, parameter gradients, calls) of one autocast bf16 step of a block,
    counting the calls of its shortcut node blocks.<node>, each made by `stand_in` (the node itself,
    or what takes its place when it is off)."""
    calls = []
    x = x.detach().clone().requires_grad_()
    with monkeypatch.context() as patch:  # undoes this patch alone, not a fixture's
        patch.setattr(blocks, node, lambda conv, t: calls.append(1) or stand_in(conv, t))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        y.float().square().mean().backward()
    return y.float().detach(), x.grad.float(), [p.grad.clone() for p in net.parameters()], len(calls)


def assert_shortcut_node_matches_autograds_sum(on, off) -> None:
    """Two shortcut_node_step results, with the node and with autograd adding the shortcut's
    gradient, the same within bf16's tolerance."""
    torch.testing.assert_close(on[0], off[0], rtol=2e-2, atol=2e-2)
    assert (on[1] - off[1]).abs().max().item() <= 2e-2 * off[1].abs().max().item()  # both paths summed
    for p, q in zip(on[2], off[2]):
        assert (p - q).abs().max().item() <= 3e-2 * q.abs().max().item()


def unshareable(net: nn.Module, end_bn: nn.BatchNorm2d, case: str) -> None:
    """Makes a fused block's shortcut gradient one that a shortcut node may not write into, as `case`
    says: its end batch-norm hooked, frozen (fine-tuning's eval mode inside a training block), or the
    plain module (`set_fused_bn(net, False)`); any other case leaves the block as it is."""
    from resnetlab.models import fused_bn

    if case.endswith("hooked"):
        end_bn.register_forward_hook(lambda *args: None)
    elif case.endswith("frozen"):
        end_bn.eval()
    elif case == "plain batch-norm":
        fused_bn.set_fused_bn(net, False)
