"""The `resnetlab` command at its edges: a Ctrl-C while PyTorch is still loading, and a reader
that closes the pipe early (`resnetlab models | head -1`). Both end in at most one line, never a
traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest

from resnetlab import entry


def test_importing_the_package_does_not_load_pytorch_until_a_name_is_used():
    code = ("import sys, resnetlab; loaded = 'torch' in sys.modules; model = resnetlab.create_model('resnet8'); "
            "print(loaded, 'torch' in sys.modules, type(model).__name__, resnetlab.UserError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "ResNet", "resnetlab.errors"]


def test_ctrl_c_while_the_command_line_loads_is_one_line_and_status_130(monkeypatch, capsys):
    ran = []

    def slow_import():  # a Ctrl-C arrives in the middle of importing PyTorch
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes: it must not raise here
        return lambda argv=None: ran.append(argv) or 0
    monkeypatch.setattr(entry, "load_cli", slow_import)
    assert entry.main(["models"]) == 130
    assert ran == [] and capsys.readouterr().err == "resnetlab: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back


def test_ctrl_c_while_the_arguments_are_parsed_is_one_line(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(entry, "load_cli", lambda: interrupted)
    assert entry.main(["models"]) == 130
    assert capsys.readouterr().err == "resnetlab: interrupted\n"


@pytest.mark.parametrize("argv", [["models"], ["weights", "list", "--json"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(argv):
    # The read end is closed before the command can write (it first imports PyTorch), so its first
    # write meets a closed pipe, as `resnetlab models | head -c 10` does once head has exited.
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


CHECK_STREAM = """
import os, sys
from resnetlab import entry
fd, name, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
entry.reopen_closed_streams()
with open(out, "w") as f:
    print(os.path.realpath(f"/proc/self/fd/{fd}"), type(getattr(sys, name)).__name__, file=f)
"""


@pytest.mark.parametrize("closed", ["stdout", "stderr", "stdin"])
def test_a_command_with_a_closed_standard_stream_runs_as_with_dev_null(closed, tmp_path):
    """`resnetlab models >&-` ended in a traceback (sys.stdout is None), and a training's kernels failed
    to build on stdout's flush, so a resumed run took other kernels and other numbers."""
    fd = {"stdin": 0, "stdout": 1, "stderr": 2}[closed]
    subprocess.run([sys.executable, "-c", CHECK_STREAM, str(fd), closed, str(tmp_path / "seen")], check=True,
                   preexec_fn=lambda: os.close(fd))
    assert (tmp_path / "seen").read_text().split() == [os.devnull, "TextIOWrapper"]
    result = subprocess.run([sys.executable, "-m", "resnetlab", "models"], capture_output=closed != "stdout",
                            text=True, preexec_fn=lambda: os.close(fd))
    assert result.returncode == 0 and "Traceback" not in (result.stderr or "")


def test_once_the_command_is_done_a_late_ctrl_c_is_ignored_while_the_process_exits(monkeypatch):
    """Two quick Ctrl-C: the second landed in PyTorch's clean-up at exit, a traceback after "interrupted"."""
    monkeypatch.setattr(entry, "load_cli", lambda: lambda argv=None: 130)
    try:
        assert entry.main() == 130  # the process's own command line (argv None)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert entry.main(["models"]) == 130 and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a caller's


def test_pytorch_that_cannot_be_loaded_is_one_line(monkeypatch, capsys):
    """Under `ulimit -v` below what PyTorch's libraries map, every command, --version included, ended in
    a 20-line ImportError ('libtorch_cpu.so: failed to map segment from shared object')."""
    def cannot_map():
        raise ImportError("libtorch_cpu.so: failed to map segment from shared object")

    monkeypatch.setattr(entry, "load_cli", cannot_map)
    assert entry.run_cli(["--version"]) == 2
    assert capsys.readouterr().err == (
        "resnetlab: error: PyTorch could not be loaded (ImportError: libtorch_cpu.so: failed to map segment from shared "
        "object); a memory limit (ulimit -v) too low for its libraries, or a broken install\n")


def test_a_real_memory_limit_too_low_for_pytorch_is_one_line():
    import resource
    limit = 400 << 20  # far below what PyTorch maps (~700 MB)

    done = subprocess.run([sys.executable, "-m", "resnetlab", "--version"], capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("resnetlab: error: PyTorch could not be loaded (")
