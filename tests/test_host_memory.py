"""engine/host_memory.py: glibc keeps a CPU training step's large freed tensors for reuse."""
import os
import platform
import subprocess
import sys

import pytest
import torch

from resnetlab.engine import host_memory, runtime
from resnetlab.engine.runtime import Runtime, prepare_model
from resnetlab.models import create_model

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


# In a fresh single-threaded process, so that every block comes from the main arena: under
# contention glibc may serve a thread from another arena, whose heaps cannot hold 64 MB.
FAULTS_OF_A_REUSED_BLOCK = """
import ctypes, resource
from resnetlab.engine.host_memory import keep_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 64 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
applied = keep_freed_memory()
touch(); touch()  # the heap grows to hold the block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("keep", [True, False])
def test_a_large_freed_block_is_reused_not_mapped_afresh(keep):
    env = {**os.environ, "RESNETLAB_KEEP_FREED_MEMORY": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_BLOCK], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    applied, faults = out[0] == "True", int(out[1])
    assert applied is keep
    if keep:
        assert faults < 100
    else:  # glibc's default: a block this large is mapped afresh, 16,384 new pages
        assert faults >= 16_000


def test_it_is_applied_by_resnetlabs_cpu_training_path_only(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1))
    cpu = torch.device("cpu")
    prepare_model(create_model("resnet20", num_classes=10), Runtime(cpu, "fp32", True))  # plain modules
    assert calls == []
    prepare_model(create_model("resnet20", num_classes=10), Runtime(cpu, "fp32", True, fused_bn=True))
    assert calls == [1]


def test_an_environment_variable_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("RESNETLAB_KEEP_FREED_MEMORY", "0")
    host_memory.keep_freed_memory.cache_clear()
    try:
        assert host_memory.keep_freed_memory() is False
    finally:
        host_memory.keep_freed_memory.cache_clear()
