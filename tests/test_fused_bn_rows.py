"""The fused batch-norm's passes for channels_last rows (fused_bn_rows.h: AVX-512, channels a
multiple of 16, the reductions' sums in registers) against the general passes (fused_bn_passes.h),
switched in the same built kernels: the same statistics, outputs and gradients within fp32 rounding
(the sums are taken in another order), the same bits where the sums are exact in any order, and
every call deterministic."""
import pytest
import torch

from resnetlab.models.fused_bn import EXTENSION

CL = torch.channels_last
KERNELS = EXTENSION.get()
pytestmark = pytest.mark.skipif(KERNELS is None or not getattr(KERNELS, "row_passes_built", False),
                                reason="needs the fused batch-norm kernels built with AVX-512")


@pytest.fixture
def switch():
    yield KERNELS.use_row_passes
    KERNELS.use_row_passes(True)


def _both(switch, fn):
    """fn() with the general passes, then with the register passes."""
    out = []
    for on in (False, True):
        switch(on)
        out.append(fn())
    return out


def _inputs(n, c, h, w, dtype):
    torch.manual_seed(c * 1000 + h)
    def t(scale=1.0, shift=0.0):
        return (torch.randn(n, c, h, w) * scale + shift).to(dtype).contiguous(memory_format=CL)
    # channel means far from 0, as after a convolution: the shifted sums must not cancel
    return t(2.0, 3.0), t(), t(), (torch.rand(c) + 0.5), torch.randn(c) * 0.1


SHAPES = [(3, 16, 5, 7), (4, 32, 17, 19), (2, 48, 9, 9), (5, 64, 8, 8), (2, 80, 6, 7), (2, 128, 11, 13),
          (2, 144, 5, 5), (2, 256, 7, 7)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,c,h,w", SHAPES)
def test_forward_statistics_and_output_agree(switch, n, c, h, w, dtype):
    x, residual, _, weight, bias = _inputs(n, c, h, w, dtype)

    def forward():
        rm, rv = torch.zeros(c), torch.ones(c)
        y, mean, invstd, scale, shift = KERNELS.forward(x, residual, weight, bias, rm, rv, 0.1, 1e-5)
        return y, mean, invstd, scale, shift, rm, rv
    general, registers = _both(switch, forward)
    for name, a, b in zip(("y", "mean", "invstd", "scale", "shift", "running_mean", "running_var"), general, registers):
        if name == "y":  # scale and shift may differ in their last bit: y then by one rounding
            tolerance = 2 ** -7 if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(b.float(), a.float(), rtol=tolerance, atol=tolerance, msg=name)
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert all(torch.equal(p, q) for p, q in zip(registers, forward()))  # deterministic


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,c,h,w", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_backward_gradients_agree_and_the_residuals_bit_for_bit(switch, n, c, h, w, dtype, with_residual):
    x, residual, dy, weight, bias = _inputs(n, c, h, w, dtype)
    y, mean, invstd, scale, shift = KERNELS.forward(x, residual if with_residual else None, weight, bias,
                                                    torch.zeros(c), torch.ones(c), 0.1, 1e-5)

    def backward():
        return KERNELS.backward(dy, y if with_residual else None, x, weight, mean, invstd, scale, shift, with_residual)
    general, registers = _both(switch, backward)
    tolerance = 2 ** -7 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(registers[0].float(), general[0].float(), rtol=tolerance,
                               atol=tolerance * general[0].float().abs().max().item(), msg="dx")
    for name, a, b in zip(("dweight", "dbias"), general[1:3], registers[1:3]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item(), msg=name)
    if with_residual:
        assert torch.equal(registers[3], general[3])  # g: dy's value or 0 either way
    assert all(torch.equal(p, q) for p, q in zip(registers, backward()) if p is not None)  # deterministic


def test_the_switch_changes_the_order_of_the_sums(switch):
    """Not two runs of one path: summed in another order, some channel's sum differs in its last bits."""
    x, _, dy, weight, bias = _inputs(8, 64, 16, 16, torch.bfloat16)
    y, mean, invstd, scale, shift = KERNELS.forward(x, None, weight, bias, torch.zeros(64), torch.ones(64), 0.1, 1e-5)
    general, registers = _both(switch, lambda: KERNELS.backward(dy, None, x, weight, mean, invstd, scale, shift, False))
    assert not torch.equal(general[1], registers[1])


# a power of two of values per channel (blocks and both threads at 1024): means are exact dyadic
# fractions, and every sum of the small integers below fits fp32's 24 bits
EXACT_SHAPES = [(2, 16, 8, 8), (4, 32, 16, 16), (2, 48, 8, 8), (4, 64, 16, 16), (2, 80, 8, 8), (2, 128, 8, 8),
                (2, 144, 8, 8), (1, 256, 16, 16)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,c,h,w", EXACT_SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_where_the_sums_are_exact_both_paths_give_the_same_bits(switch, n, c, h, w, dtype, with_residual):
    """Small integers sum exactly in any order: the statistics and coefficients are then the same,
    and the elementwise passes (y, dx) must round the same operations the same way."""
    torch.manual_seed(c + h)
    def ints(*shape):
        return torch.randint(-2, 3, shape).to(dtype).contiguous(memory_format=CL)
    _assert_same_bits(switch, ints(n, c, h, w), ints(n, c, h, w), ints(n, c, h, w), with_residual)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c", [16, 48, 80, 144])
@pytest.mark.parametrize("with_residual", [False, True])
def test_with_inexact_products_both_paths_still_give_the_same_bits(switch, c, dtype, with_residual):
    """Eighths, 64 values per channel: the sums are still exact, but g * k1 and x * k2 now round, so a
    multiply-add fused in one path and not in the other would change some bit of dx (on this data
    fma(g, k1, x * k2) + k3 and (g * k1 + x * k2) + k3 differ, checked as it was written). dy follows
    x, so that sum(g * x) and with it k2 are large."""
    torch.manual_seed(c)
    def eighths(*shape):
        return (torch.randint(-15, 16, shape) / 8).to(dtype).contiguous(memory_format=CL)
    x = eighths(1, c, 8, 8)
    dy = (x.float() + torch.randint(-1, 2, x.shape) / 8).to(dtype).contiguous(memory_format=CL)
    _assert_same_bits(switch, x, eighths(1, c, 8, 8), dy, with_residual)


def _assert_same_bits(switch, x, residual, dy, with_residual):
    """Forward, backward and evaluation of the kernels, general passes against row passes: the same bits."""
    c = x.shape[1]
    weight, bias = torch.rand(c) + 0.5, torch.randn(c)
    running_mean, running_var = torch.randn(c), torch.rand(c) + 0.5
    res = residual if with_residual else None

    def step():
        y, mean, invstd, scale, shift = KERNELS.forward(x, res, weight, bias, torch.zeros(c), torch.ones(c), 0.1, 1e-5)
        grads = KERNELS.backward(dy, y if with_residual else None, x, weight, mean, invstd, scale, shift, with_residual)
        inference = KERNELS.inference(x, res, weight, bias, running_mean, running_var, 1e-5)
        return [y, mean, invstd, *[g for g in grads if g is not None], inference]
    general, registers = _both(switch, step)
    for a, b in zip(general, registers):
        assert torch.equal(a, b)
