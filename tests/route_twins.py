"""A block's bf16 training step through one of resnetlab's convolution routes (models/blocks.convolve)
against a twin whose route is replaced by the plain module, and the convolutions and inputs the
route tests build."""
import copy

import torch
from torch import nn

from resnetlab.models import blocks


def conv3x3_module(cin: int = 32, cout: int = 32, **kwargs) -> nn.Conv2d:
    """A training nn.Conv2d, 3x3, padding 1 and no bias unless kwargs say otherwise, channels_last,
    with weights drawn from seed 0."""
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, 3, padding=kwargs.pop("padding", 1), bias=kwargs.pop("bias", False),
                     **kwargs).to(memory_format=torch.channels_last).train()


def channels_last_input(c: int = 32, n: int = 4, hw: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)


def weight_grad_reference(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """oneDNN's weight gradient of a 3x3 stride-1 padding-1 convolution (what nn.Conv2d's backward
    computes), in x's dtype."""
    weight = torch.zeros(dy.shape[1], x.shape[1], 3, 3, dtype=x.dtype)
    return torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]


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
