"""The fused end of a block with a projection shortcut, relu(bn(a) + shortcut_bn(b)): equal to the
plain modules (outputs, gradients, both batch-norms' running statistics), taken by blocks in fused
training only, and leaving hooks, evaluation and odd inputs to the modules."""
import copy

import pytest
import torch
from torch import nn

from resnetlab.models import fused_bn
from resnetlab.models.blocks import BasicBlock, Bottleneck
from resnetlab.models.fused_bn import bn_relu_projected, set_fused_bn

from batchnorms import TOLERANCE, random_bn

CL = torch.channels_last


def _run(bn, shortcut_bn, a, b, dy, fused):
    """(output, gradients of a, b and both batch-norms' weights and biases)."""
    a, b = (t.detach().clone().requires_grad_() for t in (a, b))
    out = bn_relu_projected(bn, a, nn.ReLU(), shortcut_bn, b, fused=fused)
    out.backward(dy)
    return out.detach(), [a.grad, b.grad, bn.weight.grad, bn.bias.grad, shortcut_bn.weight.grad, shortcut_bn.bias.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("shortcut_layout", ["same", "other"])
def test_the_pair_equals_the_plain_modules_in_fp64(dtype, layout, shortcut_layout):
    # 20 channels x 5x7 maps x 6 images: every tail path of the kernels; means far from 0 test the
    # shifted sums. The reference is the plain modules in fp64 on the very same (rounded) inputs,
    # so only the kernels' own rounding is measured.
    torch.manual_seed(1)
    a, b = ((torch.randn(6, 20, 5, 7, dtype=torch.float64) * 3 + mean).to(dtype).contiguous(memory_format=layout)
            for mean in (40, -7))
    if shortcut_layout == "other":  # the kernels take b in a's layout: a copy, and db in b's own layout
        b = b.contiguous(memory_format=CL if layout == torch.contiguous_format else torch.contiguous_format)
    dy = torch.randn(a.shape, dtype=dtype)  # NCHW even for channels_last inputs, as average pooling hands it
    # each batch-norm its own eps and momentum (one a cumulative average), so that a swap shows
    bns = [random_bn(20, 2, momentum=None), random_bn(20, 3, eps=1e-3, momentum=0.3)]
    reference = [copy.deepcopy(m).double() for m in bns]
    fused = [copy.deepcopy(m).to(torch.float64 if dtype == torch.float64 else torch.float32) for m in bns]
    calls = []
    real = fused_bn._PairBatchNormReLU.apply
    fused_bn._PairBatchNormReLU.apply = lambda *args: calls.append(1) or real(*args)
    try:
        for _ in range(2):  # two steps: the second's running statistics blend with the first's
            for m in fused + reference:
                m.zero_grad(set_to_none=True)
            out, grads = _run(*fused, a, b, dy, fused=True)
            out_ref, grads_ref = _run(*reference, a.double(), b.double(), dy.double(), fused=False)
    finally:
        fused_bn._PairBatchNormReLU.apply = real
    assert calls == [1, 1]  # the pair ran, not the fallback
    assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
    for name, actual, expected in zip(("output", "da", "db", "dweight", "dbias", "shortcut dweight", "shortcut dbias"),
                                      [out] + grads, [out_ref] + grads_ref):
        error = (actual.double() - expected).abs().max().item() / expected.abs().max().item()
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"
    stats_tolerance = TOLERANCE[torch.float64 if dtype == torch.float64 else torch.float32]
    for m, r in zip(fused, reference):
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(m, name).double(), getattr(r, name), rtol=stats_tolerance, atol=1e-12)
        assert m.num_batches_tracked.item() == r.num_batches_tracked.item() == 2


def test_a_refused_call_leaves_both_batch_norms_as_they_were():
    bn, shortcut_bn = random_bn(8, 0), random_bn(8, 1)
    shortcut_bn.running_var = torch.ones(7)  # one value short: the kernels refuse it
    before = [t.clone() for t in (*bn.buffers(), *shortcut_bn.buffers())]
    a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    with pytest.raises(RuntimeError, match="one value per channel"):
        bn_relu_projected(bn, a, torch.relu, shortcut_bn, b, fused=True)
    assert all(torch.equal(x, y) for x, y in zip(before, (*bn.buffers(), *shortcut_bn.buffers())))


def test_a_projection_that_is_not_a_plain_convolution_runs_as_its_module(monkeypatch):
    class Doubled(nn.Module):  # e.g. a wrapped or adapted convolution: no kernel_size of its own
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return 2 * self.conv(x)

    calls = _spy(monkeypatch)
    net = Bottleneck(32, 16, stride=2).to(memory_format=CL).train()
    net.downsample[0] = Doubled(net.downsample[0])
    plain = copy.deepcopy(net)
    set_fused_bn(net)
    x = torch.randn(2, 32, 6, 6).bfloat16().contiguous(memory_format=CL)
    torch.testing.assert_close(_bf16_step(net, x), _bf16_step(plain, x), rtol=2e-2, atol=2e-2)
    assert len(calls) == 1  # its output joins the pair like a convolution's


def _spy(monkeypatch):
    calls = []
    real = fused_bn._PairBatchNormReLU.apply
    monkeypatch.setattr(fused_bn._PairBatchNormReLU, "apply", lambda *args: calls.append(args[0].shape) or real(*args))
    return calls


def _bf16_step(net, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    y.float().square().mean().backward()
    return y.detach().float()


@pytest.mark.parametrize("block,cin,stride", [(Bottleneck, 32, 1), (Bottleneck, 64, 2), (BasicBlock, 16, 2)])
def test_projection_blocks_end_in_the_pair_in_fused_training_and_match_their_plain_twins(block, cin, stride,
                                                                                        monkeypatch):
    torch.manual_seed(0)
    plain = block(cin, 16, stride=stride).to(memory_format=CL).train()
    fused = copy.deepcopy(plain)
    set_fused_bn(fused)
    calls = _spy(monkeypatch)
    x = torch.randn(4, cin, 8, 8).bfloat16().contiguous(memory_format=CL)
    y_fused, y_plain = _bf16_step(fused, x), _bf16_step(plain, x)
    assert len(calls) == 1
    torch.testing.assert_close(y_fused, y_plain, rtol=2e-2, atol=2e-2)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert (p.grad - q.grad).abs().max() <= 3e-2 * q.grad.abs().max(), name
    for (name, s), t in zip(fused.state_dict().items(), plain.state_dict().values()):  # both BNs' statistics
        torch.testing.assert_close(s.float(), t.float(), rtol=1e-2, atol=1e-3, msg=name)


def test_the_pair_is_not_taken_without_fusing_in_evaluation_or_through_hooks(monkeypatch):
    calls = _spy(monkeypatch)
    net = Bottleneck(32, 16, stride=2).to(memory_format=CL).train()
    x = torch.randn(2, 32, 6, 6).bfloat16().contiguous(memory_format=CL)
    _bf16_step(net, x)  # fused_bn off: the plain modules
    set_fused_bn(net)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net.eval()(x)
    assert calls == []
    net.train()
    seen = []
    handle = net.downsample[1].register_forward_hook(lambda module, inp, out: seen.append("shortcut bn"))
    _bf16_step(net, x)  # a hooked shortcut batch-norm runs as its module, and its hook fires
    handle.remove()
    handle = net.downsample.register_full_backward_hook(lambda module, gin, gout: seen.append("downsample backward"))
    _bf16_step(net, x)
    handle.remove()
    assert calls == [] and seen == ["shortcut bn", "downsample backward"]
    _bf16_step(net, x)
    assert len(calls) == 1


def test_a_shortcut_of_another_dtype_runs_the_plain_modules():
    bn, shortcut_bn = random_bn(8, 0), random_bn(8, 1)
    a, b = torch.randn(2, 8, 4, 4).bfloat16(), torch.randn(2, 8, 4, 4)
    expected = torch.relu(copy.deepcopy(bn)(a) + copy.deepcopy(shortcut_bn)(b))
    out = bn_relu_projected(bn, a, torch.relu, shortcut_bn, b, fused=True)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
