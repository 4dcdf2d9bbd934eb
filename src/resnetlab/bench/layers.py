"""What the per-layer convolution benchmarks (benchmarks/pointwise_layers.py, strided_layers.py)
share: their arguments, one layer's training call and their JSON."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from .machine import describe_machine
from .run import write_json

CL = torch.channels_last
DTYPES = (torch.bfloat16, torch.float32)  # bf16 through CPU autocast, as training runs it


def layer_arguments(doc: str, reps: int = 7) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--json", help="write the rows here")
    return parser.parse_args()


def layer_tensors(shape: tuple, out_shape: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels_last input (requiring its gradient) and output gradient, in the activation dtype
    already (as in autocast training), so that no cast of them is timed in both arms."""
    x = torch.randn(shape).to(dtype).contiguous(memory_format=CL).requires_grad_()
    return x, torch.randn(out_shape).to(dtype).contiguous(memory_format=CL)


def training_call(fn: Callable, module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of fn(x) (x's and the module's gradients cleared first), under CPU
    autocast to bf16 when x is bf16."""
    def call():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=x.dtype == torch.bfloat16):
            y = fn(x)
        y.backward(dy)
    return call


def save_rows(path: str | None, batch: int, rows: list[dict]) -> None:
    if path:
        write_json({"machine": describe_machine(), "batch": batch, "rows": rows}, path)
