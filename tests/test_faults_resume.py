"""A run killed with SIGKILL anywhere resumes and ends bit-identical to a run never killed.

Each kill is deterministic (tests/killpoints.py sends SIGKILL to the process at a named point:
during the steps, inside a checkpoint write, between last.pt and best.pt, after a metrics line,
in the final test). After each one the test checks that no more than one evaluation interval
was lost, resumes (with --resume or --resume-if-exists), and compares everything the run
leaves (weights, optimizer, best.pt, metrics.jsonl, summary.json) with the uninterrupted run;
no temporary file may remain.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.engine import load_checkpoint
from resnetlab.engine import train as engine_train
from resnetlab.errors import UserError
from test_engine_train import tiny_config

KILLPOINTS = Path(__file__).with_name("killpoints.py")
EVAL_EVERY = 4
# The reference run evaluates at steps 4 (best), 8 (not best) and 12 (best, and the end), so it
# writes, in order: metrics line 1, last.pt (write 1), best.pt (2) | line 2, last.pt (3) |
# line 3, last.pt (4), best.pt (5). Each kill point maps to the steps done when it is reached.
KILLS = {
    ("step", 3): 2,  # before the first checkpoint: the run restarts from step 0
    ("record", 1): 4,  # a metrics line whose checkpoint was never written
    ("write", 1): 4,  # half of the first last.pt in its temporary file
    ("written", 1): 4,  # last.pt written, best.pt not yet
    ("write", 2): 4,  # inside the first best.pt
    ("step", 7): 6,  # mid-interval
    ("write", 3): 8,  # inside a last.pt that replaces an older one
    ("written", 4): 12,  # between the final last.pt and best.pt
    ("write", 5): 12,  # inside the final best.pt
    ("test", 1): 12,  # all steps saved, the final test under way
}
TIMING = ("images_per_s", "elapsed_s")
pytestmark = pytest.mark.slow  # ten runs killed in one forked batch, then ten resumes: ~25 s on 2 idle cores


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(recipe, the uninterrupted run, {kill point: (exit status, its run directory)})."""
    root = tmp_path_factory.mktemp("faults")
    recipe = root / "tiny.yaml"
    cfg = tiny_config(("schedule.max_steps", 12), ("train.eval_every", EVAL_EVERY), ("optim.lr", 0.05))
    recipe.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the in-process runs use one thread too: same arithmetic
    each = ",".join(f"{p}:{n}" for p, n in KILLS)  # forked from one process, all at once: each dies at its own point
    cmd = [sys.executable, str(KILLPOINTS), "--each", each, "--", "train", "--recipe", str(recipe),
           "--out", str(root / "{point}")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for the whole module: the resumes too
    try:
        assert main(["train", "--recipe", str(recipe), "--out", str(root / "reference")]) == 0
        statuses = json.loads(proc.communicate(timeout=300)[0].splitlines()[-1])
        yield recipe, root / "reference", {(p, n): (statuses[f"{p}{n}"], root / f"{p}{n}") for p, n in KILLS}
    finally:
        torch.set_num_threads(threads)
        if proc.poll() is None:  # the reference failed first: do not leave the killed runs behind
            proc.kill()


def test_the_reference_run_writes_what_the_kill_points_assume(runs):
    _, reference, _ = runs
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    errs = [r["val_top1_err"] for r in records]
    assert [r["step"] for r in records] == [4, 8, 12] and errs[1] > errs[0] > errs[2]  # best, not best, best
    assert load_checkpoint(reference / "checkpoints" / "best.pt").training.step == 12


@pytest.mark.parametrize("point", list(KILLS), ids=[f"{p}{n}" for p, n in KILLS])
def test_a_killed_run_resumes_and_ends_bit_identical(runs, point, capsys):
    recipe, reference, killed = runs
    status, run = killed[point]
    assert status == -signal.SIGKILL
    last = run / "checkpoints" / "last.pt"
    kept = load_checkpoint(last).training.step if last.exists() else 0
    assert KILLS[point] - kept <= EVAL_EVERY  # at most one evaluation interval lost
    if point[0] == "write":
        assert list(run.rglob(".*.tmp"))  # the kill did leave a half-written file
    # both ways of continuing: --resume RUN, and the unchanged command with --resume-if-exists
    again = (["--resume", str(run)] if list(KILLS).index(point) % 2 else
             ["--recipe", str(recipe), "--out", str(run), "--resume-if-exists"])
    assert main(["train", *again]) == 0, capsys.readouterr().err  # one thread, as the fixture set
    assert not list(run.rglob("*.tmp"))
    assert_same_run(run, reference)


def test_a_validation_that_fails_saves_every_step_and_the_resume_validates_it_first(runs, tmp_path, monkeypatch, capsys):
    """A limit the decoding workers reached during a validation ended the run without saving the steps
    since the last checkpoint; now they are saved (the RNGs as before the validation) and --resume
    validates that step, then goes on exactly as the run never stopped."""
    recipe, reference, _ = runs
    real, calls = engine_train.evaluate_split, []

    def fails_at_step_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            torch.rand(2)  # as a DataLoader with workers draws their seeds from torch's RNG
            raise UserError("the image-decoding worker processes failed (Too many open files)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_train, "evaluate_split", fails_at_step_8)
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"failed (Too many open files). The validation at step 8 failed; every step is saved in "
                        f"{run / 'checkpoints' / 'last.pt'}: once the cause is mended, --resume {run} validates it "
                        "and goes on\n")
    assert "Traceback" not in err and err.splitlines()[-1].startswith("resnetlab train: error: the image-decoding")
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.loop.eval_pending == 0.05
    monkeypatch.setattr(engine_train, "evaluate_split", real)
    assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert_same_run(run, reference)
    rngs = [load_checkpoint(d / "checkpoints" / "last.pt").training.rng["torch"] for d in (run, reference)]
    assert torch.equal(*rngs)


def assert_same_run(run: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / "checkpoints" / name), load_checkpoint(reference / "checkpoints" / name)
        assert a.training.step == b.training.step, name
        assert all(torch.equal(a.artifact.weights[k], b.artifact.weights[k]) for k in b.artifact.weights), name
        momenta = a.training.optimizer["state"], b.training.optimizer["state"]
        assert all(torch.equal(momenta[0][i]["momentum_buffer"], momenta[1][i]["momentum_buffer"]) for i in momenta[1])
    lines = [[{k: v for k, v in json.loads(line).items() if k not in TIMING}
              for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (run, reference)]
    assert lines[0] == lines[1]  # every evaluation exactly once, with the same numbers
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run, reference)]
    assert summaries[0]["test"] == summaries[1]["test"] and summaries[0]["steps"] == 12


def test_resume_of_a_run_killed_while_it_read_its_data_says_to_start_it_again(tmp_path, capsys):
    """kill -9 before config.yaml: "no config.yaml there; is it a run directory?" of the folder it made."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("")
    (run / "auto_recipe.json").write_text(json.dumps({"recipe": "cifar10_fast", "overrides": [], "data": "/photos",
                                                      "line": "..."}))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"resnetlab train: error: --resume {run}: its training stopped before it wrote config.yaml (while it read the "
        f"data), so no step was trained; start it again with the command that made it (resnetlab train --data /photos "
        f"--out {run} ...)\n")


def test_resume_of_a_run_still_starting_says_it_is_in_use(tmp_path, capsys):
    from resnetlab.engine.rundir import RunDirLock

    run = tmp_path / "run"
    run.mkdir()
    with RunDirLock(run):  # a training that has not written config.yaml yet
        assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnetlab train: error: {run} is in use by another training (pid {os.getpid()} on ")
    assert err.endswith("; wait for it to end\n")
    assert main(["train", "--resume", str(run)]) == 2  # released: no run there
    assert "no config.yaml there; is it a run directory?" in capsys.readouterr().err
