"""What resnetlab's own training routes (the fused batch-norm, the convolution routes of
models/blocks.convolve) check alike before they take a module's work over."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

# torch.nn.modules.module's registries of hooks on every module (nn.modules.module.register_module_*)
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def hooked(module: nn.Module) -> bool:
    """Whether a hook would see this module run: its own forward or backward hooks, or hooks
    registered for every module. A route calls the module itself then, so that every hook fires."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or any(getattr(_module, name, None) for name in _GLOBAL_HOOKS))


def runs_in_bf16(conv: nn.Module) -> bool:
    """Whether conv would run in bf16: its weights are bf16, or CPU autocast casts them to it."""
    return conv.weight.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                                   and torch.get_autocast_dtype("cpu") == torch.bfloat16)
