"""models/native.py: resnetlab's C++ kernels are built on first use; a build killed halfway (its
torch `lock` file left behind) does not make the next one wait forever."""
import contextlib
import threading
import time
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from resnetlab.models import native
from resnetlab.models.native import NativeKernels

TINY = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A one-function extension, built into a cache of its own."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY)
    return NativeKernels(source, "resnetlab_test_tiny", "test kernel", "nothing")


def test_a_build_killed_halfway_does_not_stop_the_next_one(tiny, capfd):
    directory = Path(cpp_extension._get_build_directory(tiny.name(), False))
    (directory / "lock").touch()  # what torch leaves behind when a build is killed
    builder = threading.Thread(target=tiny.get, daemon=True)
    builder.start()
    builder.join(timeout=180)  # the build itself takes seconds
    assert not builder.is_alive(), "the build waited for a lock no one holds"
    assert tiny.broken is None and tiny.get().answer() == 42
    assert not (directory / "lock").exists()
    assert "was interrupted; building it again" in capfd.readouterr().err


def test_where_there_is_no_os_lock_it_builds_as_before(tiny, monkeypatch):
    monkeypatch.setattr(native, "build_lock", lambda directory, what: contextlib.nullcontext())
    assert tiny.get().answer() == 42


def test_a_process_waiting_for_another_ones_build_says_so(tiny, capfd):
    """Two trainings started together: the second waits for the first one's build, and says so
    instead of sitting silent for a minute."""
    import fcntl

    directory = Path(cpp_extension._get_build_directory(tiny.name(), False))
    with open(directory / "resnetlab.lock", "a") as other:  # a lock of its own: as another process holds it
        fcntl.flock(other, fcntl.LOCK_EX)
        builder = threading.Thread(target=tiny.get, daemon=True)
        builder.start()
        said, deadline = "", time.monotonic() + 120  # the line comes before the wait, however loaded the machine
        while "waiting for another" not in said and builder.is_alive() and time.monotonic() < deadline:
            said += capfd.readouterr().err
            time.sleep(0.05)
        assert builder.is_alive(), "the build did not wait for the lock held by another"
        assert "waiting for another resnetlab process that is building the test kernel" in said
    builder.join(timeout=180)
    assert not builder.is_alive() and tiny.get().answer() == 42
