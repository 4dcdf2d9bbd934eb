"""What resnetlab leaves of the caller's process as it found it: its global random generators and
its default dtype. A notebook or a service that calls resnetlab keeps its own random stream (a
random search draws new values after each training), and a process that made float64 the default
still gets float32 models.

`kept_rng()` saves and restores torch's CPU generator, the CUDA generators, numpy's global
generator and Python's `random`, whatever leaves the block (a return, an error, KeyboardInterrupt).
Inside, a run seeds them from train.seed as before, so training is unchanged. `float32_default()`
builds under a float32 default dtype, restored after: a training, a bench or an export under a
float64 default computes exactly what it computes under float32's. `kept_compiler_state()` undoes
what compiling a model changes in the process (the recursion limit, an environment variable, the
warnings filters).
"""
from __future__ import annotations

import functools
import os
import random
import sys
import warnings
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def kept_rng():
    """torch (CPU and CUDA), numpy and `random` global generators as found, on any exit."""
    cuda_before = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda_before else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        if not cuda_before and torch.cuda.is_available() and torch.cuda.is_initialized():
            # CUDA started inside: before it, its generators held only the seed the CPU's also holds
            # (torch.manual_seed and torch.seed seed both; never seeded, both have torch's default)
            torch.cuda.manual_seed_all(torch.initial_seed())


def guest_call(fn):
    """Decorate a public entry point: it runs inside kept_rng(), float32_default() (torch's default
    dtype is process-wide: float32 for every thread while the call runs) and kept_compiler_state()."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with kept_rng(), float32_default(), kept_compiler_state():
            return fn(*args, **kwargs)
    return wrapper


@contextmanager
def kept_compiler_state():
    """What torch's compiler stack (torch.export, inductor, sympy) changes in the process it compiles in,
    as found after the block: the recursion limit (raised to 2000), TORCHINDUCTOR_CACHE_DIR (set, and
    inherited by every subprocess) and the warnings filters (sympy's deprecation warnings shown once)."""
    limit, cache_dir = sys.getrecursionlimit(), os.environ.get(INDUCTOR_CACHE)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        sys.setrecursionlimit(limit)
        if cache_dir is None:
            os.environ.pop(INDUCTOR_CACHE, None)
        else:
            os.environ[INDUCTOR_CACHE] = cache_dir


INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


@contextmanager
def float32_default():
    """torch's default dtype float32 inside the block, the caller's again after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
