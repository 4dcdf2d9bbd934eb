"""The stride-2 forms of the fp32 direct 3x3 kernels (models/conv_direct_stride2.h): ResNet-20's stage
entries, 16 -> 32 and 32 -> 64 channels, forward pass, input gradient (per output parity) and
weight gradient, held to fp64; their refusals; blocks with them against the plain modules; which
convolutions take them (a stand-in kernel, everywhere)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from resnetlab.models import conv_direct
from resnetlab.models.blocks import BasicBlock, PreActBasicBlock
from resnetlab.models.conv_direct import applies, packed, packed_for_strided_input_grad

from route_twins import (assert_same_fp32_step, channels_last_input, conv3x3_module, fp32_step, input_grad_reference,
                         needs_direct_kernel, weight_grad_reference, without_direct_kernels)

CL = torch.channels_last


def test_the_strided_input_gradients_packing_puts_each_output_channels_inputs_in_a_row():
    weight = torch.randn(32, 16, 3, 3)
    weights = packed_for_strided_input_grad(weight)
    assert weights.shape == (9, 32, 16) and weights.is_contiguous()
    assert torch.equal(weights[2 * 3 + 0, 7], weight[7, :, 2, 0])  # tap (row 2, column 0), output channel 7


@needs_direct_kernel
@pytest.mark.parametrize("n,c,h,w", [
    (3, 16, 6, 10),    # output 3x5: the forward pass's blocks of 2, 2 and 1
    (2, 32, 2, 2),     # one output pixel: every tap but the centre's row and column reads the border
    (5, 16, 32, 32),   # ResNet-20's first stage entry
    (4, 32, 16, 16),   # and its second
    (1, 16, 4, 22),    # 11 output columns = 8 + 2 + 1
    (2, 32, 12, 6),    # 3 output columns = 2 + 1 at 64 output channels
    (7, 16, 2, 34),    # one output row, 17 columns; more images than threads, unevenly split
])
def test_the_kernels_equal_an_fp64_reference(n, c, h, w):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    dy = torch.randn(n, 2 * c, h // 2, w // 2).contiguous(memory_format=CL)
    weight = torch.randn(2 * c, c, 3, 3) / (3 * c ** 0.5)
    kernel = conv_direct.KERNELS.get()
    results = {"forward": (kernel.conv3x3(x, packed(weight), 2), F.conv2d(x.double(), weight.double(), None, 2, 1)),
               "input_grad": (kernel.conv3x3_input_grad_s2(dy, packed_for_strided_input_grad(weight)),
                              input_grad_reference(dy.double(), weight.double(), 2)),
               "weight_grad": (kernel.conv3x3_weight_grad(x, dy, 2), weight_grad_reference(x.double(), dy.double(), 2))}
    for name, (got, reference) in results.items():
        assert got.dtype == torch.float32 and got.shape == reference.shape, name
        assert got.is_contiguous() if name == "weight_grad" else got.is_contiguous(memory_format=CL), name
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item(),
                                   msg=name)


@needs_direct_kernel
def test_no_images_give_empty_results_and_a_zero_weight_gradient():
    x, dy = torch.empty(0, 16, 4, 4).contiguous(memory_format=CL), torch.empty(0, 32, 2, 2).contiguous(memory_format=CL)
    kernel = conv_direct.KERNELS.get()
    assert kernel.conv3x3(x, packed(torch.randn(32, 16, 3, 3)), 2).shape == (0, 32, 2, 2)
    assert kernel.conv3x3_input_grad_s2(dy, torch.randn(9, 32, 16)).shape == (0, 16, 4, 4)
    assert torch.equal(kernel.conv3x3_weight_grad(x, dy, 2), torch.zeros(32, 16, 3, 3))


@needs_direct_kernel
def test_forward_and_input_gradient_do_not_depend_on_the_thread_count_and_the_weight_gradient_repeats():
    x, dy = channels_last_input(16, n=5, hw=8), channels_last_input(32, n=5, hw=4)
    weight = torch.randn(32, 16, 3, 3)
    kernel = conv_direct.KERNELS.get()

    def passes():
        return (kernel.conv3x3(x, packed(weight), 2), kernel.conv3x3_input_grad_s2(dy, packed_for_strided_input_grad(weight)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = passes()
        torch.set_num_threads(max(2, threads))
        assert all(torch.equal(a, b) for a, b in zip(passes(), one))
        first = kernel.conv3x3_weight_grad(x, dy, 2)
        assert all(torch.equal(kernel.conv3x3_weight_grad(x, dy, 2), first) for _ in range(3))
    finally:
        torch.set_num_threads(threads)


@needs_direct_kernel
@pytest.mark.parametrize("call,message", [
    (lambda k: k.conv3x3(channels_last_input(16), torch.randn(9, 16, 32), 3), "stride must be 1 or 2"),
    (lambda k: k.conv3x3(channels_last_input(16), torch.randn(9, 16, 64), 2), "16 -> 32 or 32 -> 64"),
    (lambda k: k.conv3x3(channels_last_input(32), torch.randn(9, 32, 32), 2), "16 -> 32 or 32 -> 64"),
    (lambda k: k.conv3x3(channels_last_input(16, hw=5), torch.randn(9, 16, 32), 2), "even"),
    (lambda k: k.conv3x3_input_grad_s2(channels_last_input(32, hw=3), torch.randn(9, 16, 16)), r"\(9, K, C\)"),
    (lambda k: k.conv3x3_input_grad_s2(channels_last_input(32, hw=3), torch.randn(9, 32, 8)), "16 -> 32 or 32 -> 64"),
    (lambda k: k.conv3x3_input_grad_s2(channels_last_input(32, hw=3).contiguous(), torch.randn(9, 32, 16)),
     "channels_last"),
    (lambda k: k.conv3x3_weight_grad(channels_last_input(16, hw=6), channels_last_input(32, hw=6), 2), "at the stride"),
    (lambda k: k.conv3x3_weight_grad(channels_last_input(16, hw=6), channels_last_input(64, hw=3), 2), "16 -> 32"),
    (lambda k: k.conv3x3_weight_grad(channels_last_input(16, hw=6), channels_last_input(32, hw=3), 4), "1 or 2"),
])
def test_the_kernels_refuse_what_they_cannot_compute(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(conv_direct.KERNELS.get())


@needs_direct_kernel
@pytest.mark.parametrize("make, cin, shortcut", [(BasicBlock, 16, "A"), (BasicBlock, 32, "B"), (PreActBasicBlock, 16, "A")])
def test_a_stage_entry_block_trains_to_the_same_outputs_and_gradients_with_the_kernels(make, cin, shortcut, monkeypatch):
    torch.manual_seed(0)  # as in test_conv_direct: the same numbers whatever ran before
    block = make(cin, 2 * cin, stride=2, shortcut=shortcut).to(memory_format=CL).train()
    block.fused_bn = True
    twin = copy.deepcopy(block)
    x = torch.randn(6, block.conv1.in_channels, 8, 8).contiguous(memory_format=CL)
    assert applies(block.conv1, x)  # (and conv2 where it has 32 channels: 64 stays oneDNN's)
    got = fp32_step(block, x)
    without_direct_kernels(monkeypatch)
    assert_same_fp32_step(got, fp32_step(twin, x))


@pytest.mark.parametrize("cin,cout,side,expected", [(16, 32, 8, True), (32, 64, 8, True), (16, 32, 7, False),
                                                    (16, 64, 8, False), (64, 128, 8, False), (32, 32, 8, False)])
def test_at_stride_2_the_path_applies_to_the_stage_entries_of_even_sides(direct_stand_in, cin, cout, side, expected):
    assert applies(conv3x3_module(cin, cout, stride=2), channels_last_input(cin, hw=side)) == expected
