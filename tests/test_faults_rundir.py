"""Where a run keeps its files changes under it: the run directory deleted while it trains (one line,
not FileNotFoundError's traceback), and a resume on another node whose image cache is elsewhere
(accepted without a word: where the images are cached changes nothing the run computes)."""
import json
import shutil

import test_faults

from resnetlab.cli import main
from resnetlab.engine import train as engine_train

recipe = test_faults.recipe  # the fixture: a recipe file of test_faults' 12-step tiny run


def test_a_run_directory_deleted_between_evaluations_is_one_line(tmp_path, recipe, monkeypatch, capsys):
    """metrics.jsonl's append found no folder: ENOENT was no storage error, and the traceback reached the user."""
    run, real, steps = tmp_path / "run", engine_train.train_step, []

    def step_then_delete(*args):
        steps.append(1)
        if len(steps) == 6:  # between the evaluations of steps 4 and 8
            shutil.rmtree(run)
        return real(*args)

    monkeypatch.setattr(engine_train, "train_step", step_then_delete)
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"resnetlab train: error: could not write {run / 'metrics.jsonl'} (its folder was removed while it was "
        "written to); nothing was written there. Once it can be written, start the run again")


def test_a_resume_may_move_the_image_cache_and_change_the_workers(tmp_path, recipe, capsys):
    """A job that resumes on another node, its cache on that node's scratch: --resume refused a new
    data.cache_dir ("the position in the data depends on it"; it does not), and --resume-if-exists
    called it a run of another config."""
    run = str(tmp_path / "run")
    assert main(["train", "--recipe", recipe, "--out", run, "--max-steps", "8"]) == 0
    moved = ["--set", f"data.cache_dir={tmp_path / 'node2'}", "--workers", "1"]
    assert main(["train", "--recipe", recipe, "--out", run, "--resume-if-exists", "--max-steps", "8", *moved]) == 0
    assert f"{run} finished at step 8: nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--max-steps", "12", *moved]) == 0
    assert main(["train", "--resume", run, "--max-steps", "12", "--set", f"data.cache_dir={tmp_path / 'node3'}"]) == 0
    err = capsys.readouterr().err
    assert "cache_dir" not in err and "workers" not in err, err  # neither refused nor warned about
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 12


def test_a_time_zone_python_cannot_express_starts_the_run(tmp_path, recipe, monkeypatch):
    """TZ=UTC+24 is valid POSIX, and astimezone() refused its offset: ValueError at every start."""
    import time

    monkeypatch.setenv("TZ", "UTC+24")
    time.tzset()
    try:
        assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_run_writes_nothing_through_a_link_in_its_folder(tmp_path, recipe, capsys):
    """.lock was truncated through a symbolic link (a user's file outside the run rewritten), and
    metrics.jsonl appended through one: a run copied with `cp -as` and resumed wrote its rows into the
    original run."""
    import os
    import subprocess

    victim = tmp_path / "victim.txt"
    victim.write_text("PRECIOUS\n")
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / ".lock").symlink_to(victim)
    assert main(["train", "--recipe", recipe, "--out", str(planted), "--max-steps", "4"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"resnetlab train: error: {planted / '.lock'} is a symbolic link (to {victim}), not this run's own lock file; "
        "remove the link (a run copied with cp -s?), then start again")
    assert victim.read_text() == "PRECIOUS\n"

    original, copy = tmp_path / "original", tmp_path / "copy"
    assert main(["train", "--recipe", recipe, "--out", str(original), "--max-steps", "8"]) == 0
    before = {p.name: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    subprocess.run(["cp", "-as", str(original), str(copy)], check=True)
    (copy / ".lock").unlink()  # as the message above says
    assert main(["train", "--resume", str(copy), "--max-steps", "12"]) == 0
    assert {p.name: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before  # the original untouched
    rows = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rows == [4, 8, 12] and not os.path.islink(copy / "metrics.jsonl")
    (copy / "metrics.jsonl").unlink()
    (copy / "metrics.jsonl").symlink_to(victim)
    assert main(["train", "--resume", str(copy), "--max-steps", "16"]) == 0
    assert victim.read_text() == "PRECIOUS\n"  # a link planted there: replaced as the resume tidies the file
