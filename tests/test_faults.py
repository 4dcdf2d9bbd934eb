"""Faults and hostile input around a training run: each gets one line and an exit status, and loses nothing.

Two trainings on one --out, --out naming a file, a full disk (a real tmpfs when this process
may mount one, else a simulated ENOSPC from the writer), signals while the data is built and
during the final test, --resume-if-exists, and checkpoints that do not fit their model.
"""
import errno
import json
import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

import resnetlab.data
from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.engine import checkpoint, load_checkpoint, train_and_evaluate
from resnetlab.engine import train as engine_train
from resnetlab.engine.rundir import RunDirLock
from test_engine_train import tiny_config

CFG = tiny_config(("schedule.max_steps", 12), ("train.eval_every", 4), ("optim.lr", 0.05))


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(CFG)))
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of CFG."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train_and_evaluate(CFG, run, stream=open(os.devnull, "w"))
    return run


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("resnetlab "), lines
    return lines[-1]


def test_a_second_training_on_the_same_out_is_refused_naming_the_holder(tmp_path, recipe, capsys):
    run = tmp_path / "run"
    with RunDirLock(run) as holder:
        holder.acquire()  # what a training does; flock is per open file, so this process counts as another
        assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
        line = error_line(capsys)
        assert f"{run} is in use by another training (pid {os.getpid()} on {socket.gethostname()}, started " in line
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the second one wrote nothing
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 0  # released with its holder


def test_a_forked_child_does_not_keep_the_run_locked(tmp_path):
    """A data-loading worker that outlives its killed trainer must not block the restart."""
    lock, (go_r, go_w), (ready_r, ready_w) = RunDirLock(tmp_path / "run"), os.pipe(), os.pipe()
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # the worker: the fork hooks have run once os.fork returns here; says so, then waits
        os.write(ready_w, b"r")
        os.read(go_r, 1)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        lock.release()  # the trainer's descriptor is gone (as when it is killed); the child still runs
        again = RunDirLock(tmp_path / "run")
        again.acquire()
        again.release()
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, ready_r, ready_w):
            os.close(fd)


def test_a_directory_locked_while_the_data_is_built_is_refused_too(tmp_path, recipe, monkeypatch, capsys):
    run, holders = tmp_path / "run", []
    build = resnetlab.data.build_data

    def build_while_another_starts(*args, **kwargs):  # the other training creates and locks the directory now
        holders.append(RunDirLock(run))
        holders[-1].acquire()
        return build(*args, **kwargs)

    monkeypatch.setattr(resnetlab.data, "build_data", build_while_another_starts)
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
    assert "is in use by another training" in error_line(capsys) and not (run / "config.yaml").exists()
    holders[0].release()


def test_out_naming_a_file_is_one_line(tmp_path, recipe, capsys):
    (tmp_path / "file").write_text("mine")
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "file")]) == 2
    assert error_line(capsys) == f"resnetlab train: error: {tmp_path / 'file'} is a file, not a run directory; choose another --out"
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("where, reason", [("file", "Not a directory"), ("proc", "No such file or directory")])
def test_out_that_cannot_be_made_is_one_line(tmp_path, recipe, capsys, where, reason):
    """A file standing where a parent folder should be, or a parent under /proc where mkdir says
    "no such file": mkdir's reason in one line, not a traceback."""
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "run" if where == "file" else Path("/proc/resnetlab-no-such-folder/run")
    assert main(["train", "--recipe", recipe, "--out", str(out)]) == 2
    assert error_line(capsys) == (f"resnetlab train: error: could not write {out / '.lock'} ({reason}); "
                                  "nothing was written there")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("mine", [["notes.txt"], ["config.yaml"], ["summary.json", "eval/"]])
def test_out_holding_the_users_files_is_refused_and_left_as_it_was(tmp_path, recipe, capsys, mine):
    """`--out .` in a project, or a folder whose config.yaml or summary.json a run would replace."""
    out = tmp_path / "project"
    for name in mine:
        (out / name).mkdir(parents=True) if name.endswith("/") else (out / name).parent.mkdir(exist_ok=True)
        if not name.endswith("/"):
            (out / name).write_text("mine")
    assert main(["train", "--recipe", recipe, "--out", str(out)]) == 2
    assert error_line(capsys) == (f"resnetlab train: error: --out {out} already holds other files "
                                  f"({', '.join(sorted(mine))}) and no run; give a new or empty folder")
    assert sorted(p.name + "/" * p.is_dir() for p in out.iterdir()) == sorted(mine)
    assert all((out / name).read_text() == "mine" for name in mine if not name.endswith("/"))


def test_out_where_a_start_failed_or_stopped_before_a_checkpoint_starts_again(tmp_path, recipe, reference):
    """What a refused or killed start leaves (.lock, a temporary file, a run's own config.yaml) is not the user's."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")
    (out / ".config.yaml.999999999.tmp").write_text("cut short")
    (out / "config.yaml").write_text((reference / "config.yaml").read_text())
    assert main(["train", "--recipe", recipe, "--out", str(out)]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / ".config.yaml.999999999.tmp").exists()


@pytest.mark.parametrize("command", [["train", "--data", "{long}", "--out", "{tmp}/run"], ["train", "--recipe",
                                     "{recipe}", "--out", "{long}"], ["train", "--resume", "{long}"], ["train", "--recipe", "{long}", "--out", "{tmp}/run"],
                                     ["eval", "{long}"], ["data", "{long}"], ["report", "{long}"],
                                     ["predict", "resnet20", "{long}.jpg"]])
def test_a_name_too_long_for_the_system_is_one_line(tmp_path, recipe, capsys, command):
    """A folder name over 255 bytes fails the first os.stat on it, in whichever step looks first."""
    long = str(tmp_path / ("a" * 300))
    argv = [word.format(long=long, tmp=tmp_path, recipe=recipe) for word in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"resnetlab {command[0]}: error: name too long ({long[:50]}...") and err.rstrip().endswith(
        "a file or folder name may have at most 255 bytes, a path 4096"), err
    assert os.listdir(tmp_path) == ["tiny.yaml"], "nothing written"


@contextmanager
def small_disk(path, size: int):
    """A tmpfs of `size` bytes at `path`, or None where this process may not mount one."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def full_disk(path, monkeypatch):
    """A full 64 KiB tmpfs at `path` (holding the file "filler"), or where none can be mounted, an
    ordinary folder whose writes through resnetlab.files fail with ENOSPC; yields the tmpfs or None."""
    with small_disk(path, 64 * 1024) as disk:
        if disk is not None:
            with pytest.raises(OSError), open(disk / "filler", "wb") as filler:
                while True:  # fill it up
                    filler.write(b"\0" * 4096)
                    filler.flush()
        else:
            def full(path, *args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(resnetlab.files, "open", full, raising=False)
        yield disk


def test_a_full_disk_at_the_start_is_one_line(tmp_path, recipe, monkeypatch, capsys):
    with full_disk(tmp_path / "disk", monkeypatch):
        run = tmp_path / "disk" / "run"
        assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
        assert error_line(capsys) == (f"resnetlab train: error: could not write {run / 'config.yaml'} (No space left on "
                                      "device); nothing was written there. Free some space, then start the run again")


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, reference, monkeypatch, capsys, fmt):
    """torch's C++ TorchScript writer aborted the whole process on a full disk (exit 134, a core
    message) and left its temporary file; the bytes are now serialised first and written by Python."""
    with full_disk(tmp_path / "disk", monkeypatch) as disk:
        out = tmp_path / "disk" / f"model.{'pt' if fmt == 'torchscript' else fmt}"
        assert main(["export", str(reference), "--format", fmt, "--out", str(out)]) == 2
        assert error_line(capsys) == (f"resnetlab export: error: could not write {out} (No space left on device); "
                                      "nothing was written there")
        assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == (["filler"] if disk is not None else [])


def test_a_full_disk_during_a_checkpoint_keeps_the_old_one_and_the_run_resumes(tmp_path, recipe, reference,
                                                                               monkeypatch, capsys):
    """Room for last.pt and best.pt of step 4 and a few small files, not for the last.pt of step 8."""
    room = 2 * (reference / "checkpoints" / "last.pt").stat().st_size + 64 * 1024
    with small_disk(tmp_path / "disk", room) as disk:
        if disk is None:  # simulated: the checkpoint writer raises ENOSPC once `room` bytes are written
            write, written = checkpoint._WriteAll.write, [0]

            def limited(self, data):
                written[0] += len(data)
                if written[0] > room - 64 * 1024:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return write(self, data)
            monkeypatch.setattr(checkpoint._WriteAll, "write", limited)
        run = tmp_path / "disk" / "run"
        assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
        assert error_line(capsys) == (
            f"resnetlab train: error: could not write {run / 'checkpoints' / 'last.pt'} (No space left on device); the "
            f"previous last.pt is intact. Free some space, then continue with --resume {run}")
        assert load_checkpoint(run / "checkpoints" / "last.pt").training.step == 4
        assert not list(run.rglob("*.tmp"))
        if disk is not None:
            subprocess.run(["mount", "-o", f"remount,size={8 * room}", str(disk)], check=True)
        monkeypatch.undo()
        assert main(["train", "--resume", str(run)]) == 0
        a, b = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(reference / "checkpoints" / "last.pt")
        assert a.training.step == 12 and all(torch.equal(a.artifact.weights[k], b.artifact.weights[k]) for k in b.artifact.weights)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP (a closed terminal) ended it without a word
def test_sigterm_while_the_data_is_built_stops_before_the_first_step(tmp_path, recipe, monkeypatch, capsys, sig):
    run, build = tmp_path / "run", resnetlab.data.build_data

    def build_then_signal(*args, **kwargs):
        bundle = build(*args, **kwargs)
        os.kill(os.getpid(), sig)
        return bundle

    monkeypatch.setattr(resnetlab.data, "build_data", build_then_signal)
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 128 + sig
    assert (f"resnetlab train: stopped by {sig.name} at step 0; no checkpoint yet, so nothing was lost. "
            f"Continue with: resnetlab train --resume {run}") in capsys.readouterr().err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0  # config.yaml, no checkpoint: starts at step 0
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.step == 12


def test_ctrl_c_during_the_final_test_stops_with_130_and_keeps_the_run(tmp_path, recipe, monkeypatch, capsys):
    run, final_test = tmp_path / "run", engine_train.final_test

    def ctrl_c_then_test(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return final_test(*args)

    monkeypatch.setattr(engine_train, "final_test", ctrl_c_then_test)
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 130
    assert f"stopped by SIGINT at step 12; checkpoint saved to {run / 'checkpoints' / 'last.pt'}" in capsys.readouterr().err
    assert not (run / "summary.json").exists() and load_checkpoint(run / "checkpoints" / "last.pt").training.step == 12
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0  # no step left: the final test, then summary.json
    assert json.loads((run / "summary.json").read_text())["steps"] == 12


def test_resume_if_exists_starts_continues_and_refuses_another_config(tmp_path, recipe, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--max-steps", "4"]) == 0
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--max-steps", "4"]) == 0
    assert f"{run} finished at step 4: nothing to resume" in capsys.readouterr().err  # not tested or written again
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--lr", "0.01"]) == 2
    assert error_line(capsys) == (f"resnetlab train: error: {run} holds a run with another config (optim.lr: 0.05 -> "
                                  f"0.01); continue it with --resume {run} or choose another --out")


def test_resume_if_exists_goes_on_with_the_run_s_own_config_where_only_the_recipe_changed(tmp_path, recipe, capsys):
    """A requeue after an upgrade that changed a recipe's default (the photo recipes' test protocol, the scale range
    of 2026-12-06) was refused as "another config": the command was the same. The run goes on as it was made."""
    run = str(tmp_path / "run")
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--max-steps", "4"]) == 0
    capsys.readouterr()
    Path(recipe).write_text(Path(recipe).read_text().replace("test_protocol: center", "test_protocol: flip"))
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--max-steps", "4"]) == 0
    err = capsys.readouterr().err
    assert (f"--resume-if-exists: {run} goes on with its own config; the recipe says otherwise now for "
            "train.test_protocol: 'center' -> 'flip' (a new run would take that)") in err
    assert f"{run} finished at step 4: nothing to resume" in err
    assert "test_protocol: center" in (Path(run) / "config.yaml").read_text()


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(model_name="resnet20"), ["says its model is resnet20, but weights do not fit", "they are resnet8"]),
    (lambda c: c.pop("normalizer"), ["lacks normalizer: not a complete resnetlab-checkpoint-v1 checkpoint"]),
])
def test_a_checkpoint_that_does_not_fit_its_model_is_one_line(tmp_path, reference, capsys, edit, words):
    ckpt = load_checkpoint(reference / "checkpoints" / "last.pt").to_dict()  # without a digest, as an older
    edit(ckpt)  # resnetlab wrote it: nothing to check the edit against
    torch.save(ckpt, tmp_path / "edited.pt")
    for argv in (["eval", str(tmp_path / "edited.pt")], ["export", str(tmp_path / "edited.pt"), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]):
        assert main(argv) == 2
        line = error_line(capsys)
        assert str(tmp_path / "edited.pt") in line and all(w in line for w in words), line
