"""Session-wide test setup."""
import os

import pytest

# On some CPUs inference compiles an AOTInductor package per checkpoint (inference/fastpath.py),
# tens of seconds each: the suite predicts eagerly, but for tests/test_fastpath.py, which turns it on.
os.environ["RESNETLAB_COMPILE"] = "0"


@pytest.fixture(scope="session", autouse=True)
def fused_bn_kernels_built():
    """Build resnetlab's kernels (models/fused_bn.py; models/conv_wgrad.py on CPUs with AMX or
    AVX-512 BF16; models/conv_direct.py on the other CPUs with AVX-512) once, before any test starts
    a training subprocess: a first build takes a minute or two on 2 cores, which would otherwise
    land inside that subprocess's timeout. Later sessions find the builds in torch's cache."""
    from resnetlab.models import conv_direct, conv_wgrad
    from resnetlab.models.fused_bn import EXTENSION

    EXTENSION.get()
    for kernels in (conv_wgrad, conv_direct):
        if kernels.kernel_kind():
            kernels.KERNELS.get()


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """A test that sets torch's thread count (one thread makes sums reproducible) does not leave
    every later test of the session running on that many."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def direct_stand_in(monkeypatch):
    """The direct kernels (models/conv_direct.py) replaced by route_twins.DirectStandIn, on a CPU
    taken to be one they are meant for."""
    from resnetlab.models import conv_direct
    from route_twins import DirectStandIn

    kernels = DirectStandIn()
    monkeypatch.setattr(conv_direct, "kernel_kind", lambda: "AVX-512")
    monkeypatch.setattr(conv_direct.KERNELS, "get", lambda: kernels)
    return kernels
