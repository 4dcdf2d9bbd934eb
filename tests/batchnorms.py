"""Batch-norms with random, non-trivial parameters and statistics, and the tolerances the fused
kernels are held to, shared by the fused batch-norm tests."""
import torch
from torch import nn

# Worst error allowed, relative to the largest value of the reference: fp32 is the same math
# reordered; bf16 rounds the output once where the plain path rounds after BN and after the addition.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}


def random_bn(channels: int = 8, seed: int = 0, **kwargs) -> nn.BatchNorm2d:
    """nn.BatchNorm2d(channels, **kwargs) with weight, bias and running statistics drawn from `seed`
    (a fresh module's ones and zeros would hide a swapped or ignored parameter)."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(channels, **kwargs)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn
