"""A training whose console goes away: SIGHUP (a closed terminal or ssh session) stops it as SIGTERM
does (tests/test_faults.py), unless it runs under nohup; a stderr that cannot be written (the reader of a
pipe gone, a full disk) no longer ends the run, which finishes and writes its files."""
import json
import os
import signal
import sys

import pytest
import test_faults

from resnetlab.cli import main
from resnetlab.cli.console import ForgivingStream
from resnetlab.engine.signals import StopOnSignal

recipe = test_faults.recipe  # the fixture: a recipe file of test_faults' 12-step tiny run


def test_under_nohup_a_hangup_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            assert not stop.requested
        assert signal.getsignal(signal.SIGTERM) != stop._handle  # the others are given back
    finally:
        signal.signal(signal.SIGHUP, previous)


class GoneAfter:
    """A console whose reader goes away after `lines` writes (`2>&1 | head`), or whose disk fills."""

    def __init__(self, lines: int, error: OSError):
        self.left, self.error, self.seen = lines, error, []

    def write(self, text):
        if self.left <= 0:
            raise self.error
        self.left -= 1
        self.seen.append(text)
        return len(text)

    def flush(self):
        if self.left <= 0:
            raise self.error

    def isatty(self):
        return False


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"), OSError(28, "No space left on device")],
                         ids=["reader-gone", "disk-full"])
def test_a_console_that_cannot_be_written_does_not_end_the_run(tmp_path, recipe, monkeypatch, capsys, error):
    """The first failed write raised out of the loop: the run ended (exit 141 or 1) without a checkpoint."""
    console = GoneAfter(2, error)
    monkeypatch.setattr(sys, "stderr", console)
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "run")]) == 0
    assert len(console.seen) == 2 and console.left == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 12
    assert sys.stderr is console  # given back after the run


def test_a_forgiving_stream_passes_everything_until_the_first_failure():
    console = GoneAfter(1, BrokenPipeError(32, "Broken pipe"))
    stream = ForgivingStream(console)
    assert stream.write("one\n") == 4 and stream.write("two\n") == 4 and stream.write("three\n") == 6
    stream.flush()
    assert console.seen == ["one\n"] and isinstance(stream.failed, BrokenPipeError) and stream.isatty() is False


FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint_v1_resnet8.pt")


def resnetlab(*args, env=None, **streams):
    import subprocess
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                                                **streams})


def test_a_stdout_that_cannot_be_written_is_one_line_and_status_2(tmp_path):
    """stdout on a full disk ended every command in a traceback and status 1 (predict's "some files
    were unreadable, the others' results are complete"), its last line cut short."""
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    with open("/dev/full", "w") as full:
        for args in (["models"], ["models", "--json"], ["predict", FIXTURE, str(tmp_path / "red.png")]):
            done = resnetlab(*args, stdout=full)
            assert done.returncode == 2, done.stderr
            assert done.stderr.splitlines()[-1] == (f"resnetlab {args[0]}: error: could not write to stdout (No space "
                                                    "left on device); its output is cut short")
            assert "Traceback" not in done.stderr


def test_a_stderr_that_cannot_be_written_keeps_the_commands_status():
    with open("/dev/full", "w") as full:
        done = resnetlab("predict", FIXTURE, "nothere.jpg", stderr=full)
    assert done.returncode == 2  # the error it could not say: 1 ("some files unreadable") when its traceback failed too


def test_names_a_terminal_cannot_show_are_escaped_not_a_traceback(tmp_path):
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "café猫.png")
    done = resnetlab("predict", FIXTURE, str(tmp_path / "café猫.png"), "--topk", "1", env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith(f"{tmp_path}/caf\\xe9\\u732b.png  ")


def test_image_progress_draws_a_bar_on_a_terminal_and_takes_it_away(monkeypatch):
    import fcntl
    import struct
    import termios

    from resnetlab.cli.console import ImageProgress

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with open(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            with ImageProgress("embed") as progress:
                progress(64, 100)
                assert progress.bar.n == 64 and progress.bar.total == 100
            assert progress.bar.disable  # closed: leave=False wipes it from the terminal
        assert b"embed" in os.read(leader, 4096)
    finally:
        os.close(leader)
        os.close(follower)
