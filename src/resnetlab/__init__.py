"""resnetlab: Deep Residual Learning for Image Recognition (He et al., CVPR 2016).

The names below are imported on first use (PEP 562), not with the package: importing PyTorch takes
seconds, and the `resnetlab` command (resnetlab/entry.py) must be able to answer a Ctrl-C during
that time with one line instead of a traceback.
"""
from __future__ import annotations

import importlib

from resnetlab.errors import UserError

__version__ = "0.1.0"
_LAZY = {"Classifier": "resnetlab.api", "ClassScore": "resnetlab.api", "Prediction": "resnetlab.api",
         "load": "resnetlab.api", "create_model": "resnetlab.models", "list_models": "resnetlab.models",
         "load_weights": "resnetlab.models", "model_info": "resnetlab.models", "profile": "resnetlab.models",
         # what train_and_evaluate raises: a signal's stop (the checkpoint saved), NaN or infinite weights
         "TrainingInterrupted": "resnetlab.engine.signals", "TrainingDiverged": "resnetlab.engine.state"}
__all__ = sorted(_LAZY) + ["UserError", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
