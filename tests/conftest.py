"""Session-wide test setup."""
import os

import pytest

# On some CPUs inference compiles an AOTInductor package per checkpoint (inference/fastpath.py),
# tens of seconds each: the suite predicts eagerly, but for tests/test_fastpath.py, which turns it on.
os.environ["RESNETLAB_COMPILE"] = "0"


@pytest.fixture(scope="session", autouse=True)
def fused_bn_kernels_built():
    """Build the fused batch-norm kernels (models/fused_bn.py) once, before any test starts a
    training subprocess: a first build takes a minute or two on 2 cores, which would otherwise
    land inside that subprocess's timeout. Later sessions find the build in torch's cache."""
    from resnetlab.models.fused_bn import EXTENSION

    EXTENSION.get()
