"""Hostile file systems and process groups: a FIFO or a device among the images (opening a FIFO waited for
ever), folders without read permission (tracebacks, or predict leaving their images out without a word),
names that are not UTF-8, SIGTERM to a training's whole process group (`timeout`, a job scheduler).
Each is one line, exit 2 (or a named skipped file, or the stop line), and never a hang."""
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_data_folders import COLOURS, _tree
from test_predict_synthetic import train_tiny_run

from resnetlab.cli import main


@contextmanager
def deadline(seconds=60):
    """A regression would hang in open(): end it as a failure instead (a signal interrupts open)."""
    def hung(*_):  # not TimeoutError: an OSError, which code that reads files may catch and go on to the next FIFO
        raise AssertionError("hung: a FIFO was opened")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("hostile"))


def _fifo_tree(tmp_path):
    root = _tree(tmp_path / "d")
    os.mkfifo(root / "train" / "cat" / "x.jpg")
    os.symlink("/dev/zero", root / "test" / "dog" / "zero.png")
    return root


def test_a_fifo_or_device_in_a_data_folder_is_a_bad_file_not_a_hang(tmp_path, capsys):
    root = _fifo_tree(tmp_path)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with deadline():
        assert main(["data", str(root), *cache]) == 2
    assert capsys.readouterr().err == (f"resnetlab data: error: {root / 'train' / 'cat' / 'x.jpg'}: not a regular file "
                                       "(a FIFO); remove it or pass --skip-bad to skip bad files with a count\n")
    with deadline():
        assert main(["data", str(root), "--skip-bad", *cache]) == 0
    out = capsys.readouterr().out
    assert "train 12, test 12 images, 3 classes" in out and ", 2 bad files skipped" in out
    assert f"skipped {root / 'test' / 'dog' / 'zero.png'}: not a regular file (a character device)" in out


def test_zero_config_train_does_not_open_a_fifo_while_it_surveys_the_images(tmp_path, capsys):
    root = _tree(tmp_path / "d", per_class=2)
    for name in COLOURS:  # every probed image a FIFO: the survey opened one first
        for i in range(2):
            (root / "train" / name / f"{i}.png").unlink()
            os.mkfifo(root / "train" / name / f"{i}.png")
    with deadline():
        assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "resnet8",
                     "--epochs", "1", "--init", "none", "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "not a regular file (a FIFO)" in capsys.readouterr().err


def test_predict_names_a_fifo_among_its_images_and_goes_on(run_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    (folder / "a.jpg").write_bytes(image.read_bytes())
    os.mkfifo(folder / "b.jpg")
    with deadline():
        assert main(["predict", str(run_dir), str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"skipped {folder / 'b.jpg'}: not a regular file (a FIFO)" in captured.err
    assert "a.jpg" in captured.out and "b.jpg" not in captured.out


def _unreadable(monkeypatch, folder: Path):
    """As chmod 000 does for a user without root's override of permissions (tests may run as root)."""
    folder = str(folder)
    scandir, listdir = os.scandir, Path.iterdir

    def refuse(path):
        if os.fspath(path).rstrip("/") == folder:
            raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "scandir", lambda path=".": refuse(path) or scandir(path))
    monkeypatch.setattr(Path, "iterdir", lambda self: refuse(self) or listdir(self))


@pytest.mark.parametrize("where", ["", "train", "test"])
def test_a_data_folder_without_read_permission_is_one_line(tmp_path, monkeypatch, capsys, where):
    root = _tree(tmp_path / "d")
    _unreadable(monkeypatch, root / where if where else root)
    assert main(["data", str(root), "--cache-dir", str(tmp_path / "cache")]) == 2
    folder = root / where if where else root
    assert capsys.readouterr().err == (f"resnetlab data: error: {folder}: cannot list the folder (Permission denied); "
                                       "fix its permissions\n")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "resnet8", "--epochs", "1"]) == 2
    err = capsys.readouterr().err  # after the zero-config line when only test/ is unreadable
    assert "cannot list the folder (Permission denied); fix its permissions" in err.splitlines()[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_predict_refuses_a_subfolder_it_cannot_list_instead_of_leaving_its_images_out(run_dir, monkeypatch, capsys):
    test = run_dir.parent / "data" / "test"
    hidden = next(d for d in sorted(test.iterdir()) if d.is_dir())
    _unreadable(monkeypatch, hidden)
    assert main(["predict", str(run_dir), str(test)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"resnetlab predict: error: {hidden}: cannot list the folder (Permission denied); fix its "
                            "permissions, or leave it out of the inputs\n") and captured.out == ""


def test_a_class_folder_whose_name_is_not_utf8_is_refused_before_training(tmp_path, capsys):
    """It trained, then failed writing the per-class CSV of the final test: no summary, a resume failing the same way."""
    root = _tree(tmp_path / "d")
    for split in ("train", "test"):
        os.rename(root / split / "emu", os.path.join(os.fsencode(root / split), b"e\xffmu"))
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "resnet8", "--epochs", "1",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == (f"resnetlab train: error: class folder b'e\\xffmu' in {root / 'train'}: its name is not valid UTF-8 "
                    "or holds a control character; rename the folder (its name is the class name)")
    assert not (tmp_path / "run").exists()


def test_a_utf8_class_folder_in_a_process_that_reads_names_as_ascii_names_the_locale(tmp_path):
    """With PYTHONUTF8=0 in the C locale, a valid UTF-8 name (cafe with an accent) was called not UTF-8."""
    root = _tree(tmp_path / "d")
    os.rename(root / "train" / "emu", root / "train" / "café")
    done = subprocess.run([sys.executable, "-m", "resnetlab", "data", str(root)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C"}, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"resnetlab data: error: class folder 'caf\\xe9' in {root / 'train'}: this process reads file names as ascii "
        "(the locale's encoding); run it with a UTF-8 locale (LANG=C.UTF-8) or PYTHONUTF8=1"]


def test_embed_writes_a_file_name_that_is_not_utf8_as_its_bytes(run_dir, tmp_path, capsys):
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    odd = os.path.join(os.fsencode(tmp_path), b"a\xff.jpg")
    with open(odd, "wb") as f:
        f.write(image.read_bytes())
    assert main(["embed", str(run_dir), os.fsdecode(odd), "--out", str(tmp_path / "e.npy")]) == 0
    assert (tmp_path / "e.names.txt").read_bytes() == odd + b"\n"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return found


def test_sigterm_to_the_process_group_of_a_training_with_decoding_workers_is_the_stop_line(tmp_path):
    """The workers died of it, and the parent's SIGCHLD handler raised "DataLoader worker (pid N) is
    killed by signal: Terminated" wherever it was (a checkpoint write once): a traceback, no stop line."""
    root = _tree(tmp_path / "photos", per_class=6, size=(96, 96))  # over 64 px: decoded by a worker per batch
    # PyTorch's operators, not resnetlab's C++ kernels: a CI run once waited the whole 240 s below with the child in
    # the kernels' load (built or not, it takes the build lock other processes of the suite use), before any worker
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "train", "--data", str(root), "--out", str(tmp_path / "run"),
                             "--model", "resnet8", "--init", "none", "--image-size", "32", "--max-steps", "100000",
                             "--set", "train.workers=1", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                             "--set", "train.fused_bn=false"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 240
        while not _children(proc.pid) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert proc.poll() is None and _children(proc.pid), "the training never started a decoding worker"
        time.sleep(0.5)  # into its batches
        os.killpg(proc.pid, signal.SIGTERM)  # as `timeout` and schedulers do: the workers get it too
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in err and proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at step" in err and f"Continue with: resnetlab train --resume {tmp_path / 'run'}" in err


def test_a_fifo_or_device_given_as_a_checkpoint_or_weights_is_named_as_such(run_dir, tmp_path, capsys):
    """It said "checkpoint not found" (and a FIFO best.pt was passed over for last.pt without a word)."""
    os.mkfifo(tmp_path / "ck.pt")
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    with deadline():
        assert main(["predict", str(tmp_path / "ck.pt"), str(image)]) == 2
        assert main(["eval", "/dev/zero"]) == 2
        assert main(["train", "--data", str(run_dir.parent / "data"), "--out", str(tmp_path / "run"), "--model", "resnet8",
                     "--init", str(tmp_path / "ck.pt")]) == 2
    assert [line for line in capsys.readouterr().err.splitlines() if "no --recipe given" not in line] == [
        f"resnetlab predict: error: {tmp_path / 'ck.pt'} is not a regular file (a FIFO), not a checkpoint",
        "resnetlab eval: error: /dev/zero is not a regular file (a character device), not a checkpoint",
        f"resnetlab train: error: {tmp_path / 'ck.pt'} is not a regular file (a FIFO), not weights"]
    fake_run = tmp_path / "fake"
    (fake_run / "checkpoints").mkdir(parents=True)
    os.mkfifo(fake_run / "checkpoints" / "best.pt")
    (fake_run / "checkpoints" / "last.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    with deadline():
        assert main(["eval", str(fake_run)]) == 2
    assert capsys.readouterr().err == (f"resnetlab eval: error: {fake_run / 'checkpoints' / 'best.pt'} is not a regular "
                                       "file (a FIFO), not a checkpoint\n")


def test_an_out_that_is_a_dangling_symbolic_link_is_said_as_such(run_dir, tmp_path, capsys):
    (tmp_path / "dl").symlink_to(tmp_path / "gone")
    assert main(["train", "--data", str(run_dir.parent / "data"), "--out", str(tmp_path / "dl"), "--model", "resnet8",
                 "--init", "none"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the zero-config line
    assert f"({tmp_path / 'dl'} is a symbolic link to {tmp_path / 'gone'}, which does not exist)" in err
    assert not (tmp_path / "gone").exists()


def test_a_sigterm_as_a_decoding_worker_starts_does_not_kill_it(tmp_path):
    """The stop signals are blocked across the workers' fork until each has ignored them: the
    SIGTERM test above failed now and then (a worker killed before its worker_init_fn ran)."""
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("worker_start_sigterm.py")), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "batches 2\n", done.stderr[-2000:]


def test_a_ctrl_c_as_a_small_image_decoding_worker_starts_does_not_kill_it(tmp_path):
    """The same for the pool that decodes a small-image folder into the cache: a worker that got
    the SIGINT before its initializer ran died of KeyboardInterrupt, its traceback on stderr."""
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("pool_start_sigint.py")), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "images 8\n" and done.stderr == "", done.stderr[-2000:]
