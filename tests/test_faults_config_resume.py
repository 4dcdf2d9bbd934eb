"""A refused command leaves the run exactly as it was: a --resume with a value the run refuses,
a shortened run, a new run with a bad model or schedule. A finished run has nothing to resume:
rerunning its command (as a job scheduler does) succeeds without testing or writing again.
"""
import json
import shutil

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.engine import load_checkpoint
from resnetlab.engine import train as engine_train
from test_engine_train import tiny_config
from test_faults import error_line

CFG = tiny_config(("schedule.max_steps", 8), ("train.eval_every", 4))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(recipe, a run of CFG that trained all its steps and wrote summary.json)."""
    root = tmp_path_factory.mktemp("finished")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(CFG)))
    assert main(["train", "--recipe", str(recipe), "--out", str(root / "run")]) == 0
    return str(recipe), root / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run, to be changed (or not) by the test."""
    return shutil.copytree(finished[1], tmp_path / "run")


def files(run) -> dict:
    """Every file of the run, by content; .lock records its last holder, whoever was refused."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("override", [["--set", "schedule.kind=bogus"], ["--model", "resnet14"],
                                      ["--set", "finetune.freeze_stages=9"], ["--set", "model.kwargs={shortcut: B}"]],
                         ids=["schedule", "model", "freeze", "kwargs"])
def test_a_refused_resume_leaves_the_run_as_it_was_and_resumable(run, override, capsys):
    before = files(run)
    assert main(["train", "--resume", str(run), *override]) == 2
    assert error_line(capsys).startswith("resnetlab train: error: ")
    assert files(run) == before
    # the run's own config still resumes it, and a value --resume may change is recorded
    assert main(["train", "--resume", str(run), "--max-steps", "12"]) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.step == 12
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["max_steps"] == 12


@pytest.mark.parametrize("edit, said", [
    (("optim", "batch_size", 32), "cannot change optim.batch_size: 16 -> 32: the position in the data depends on it"),
    (("train", "seed", 7), "cannot change train.seed: 0 -> 7: the shuffle and the validation hold-out follow"),
    (("optim", "lr", 0.05), "warning: --resume with a new schedule (optim.lr: 0.1 -> 0.05"),
], ids=["batch-size", "seed", "lr"])
def test_a_hand_edited_config_yaml_is_held_to_what_the_last_checkpoint_trained_with(run, capsys, edit, said):
    """An edited batch size was taken silently (the epoch column went backwards), an edited seed was blamed
    on the data, an edited lr went without the warning the same --lr gives."""
    section, key, value = edit
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["train", "--resume", str(run), "--max-steps", "12"])
    assert said in capsys.readouterr().err and code == (0 if key == "lr" else 2)


@pytest.mark.parametrize("bad, words", [("model.name=resnet21", "unknown model 'resnet21'"),
                                        ("schedule.kind=bogus", "unknown schedule.kind 'bogus'"),
                                        ("model.kwargs={num_classes: 5}",  # was a TypeError traceback
                                         "model.kwargs.num_classes: the number of classes comes from the data")])
def test_a_new_run_with_a_bad_model_or_schedule_leaves_nothing_and_print_config_refuses_it(
        finished, tmp_path, capsys, bad, words):
    argv = ["train", "--recipe", finished[0], "--out", str(tmp_path / "new"), "--set", bad]
    assert main(argv) == 2
    assert words in error_line(capsys) and not (tmp_path / "new").exists()
    assert main([*argv, "--print-config"]) == 2
    assert words in error_line(capsys)


def test_a_finished_run_is_not_shortened(run, capsys):
    before = files(run)
    assert main(["train", "--resume", str(run), "--max-steps", "4"]) == 2
    assert f"{run} is already at step 8, past --max-steps 4" in error_line(capsys)
    assert files(run) == before


def test_a_finished_run_has_nothing_to_resume_and_is_not_tested_again(finished, run, monkeypatch, capsys):
    monkeypatch.setattr(engine_train, "final_test", lambda *a: pytest.fail("tested again"))
    before = files(run)
    # --resume, and a scheduler rerunning the command that made the run
    for again in (["--resume", str(run)], ["--recipe", finished[0], "--out", str(run), "--resume-if-exists"]):
        assert main(["train", *again]) == 0
        out, err = capsys.readouterr()
        assert f"{run} finished at step 8: nothing to resume" in err
        assert json.loads(out) == json.loads((run / "summary.json").read_text())  # its summary, as a run prints it
        assert files(run) == before


def _crafted(raw: dict, change: str) -> None:
    import torch

    if change == "step":
        raw["step"] = -7
    elif change == "window":
        raw["metrics"]["train_window"] = [1]
    else:
        raw["rng"]["numpy"]["keys"] = torch.zeros(5, dtype=torch.int64)


@pytest.mark.parametrize("change, said", [
    ("step", "is damaged or was not written by resnetlab (step -7, best_step 8)"),
    ("window", "is damaged or was not written by resnetlab (train_window not 3 numbers)"),
    ("rng", "does not fit this run's resnet8 and optimizer (index 5 is out of bounds"),
])
def test_a_crafted_training_state_is_refused_in_one_line_and_the_run_kept(run, change, said, capsys):
    """A step of -7 (digest made anew) had --resume drop every line of metrics.jsonl, then fail in a
    traceback; a meter or numpy RNG state of another length failed in tracebacks."""
    import torch

    from resnetlab.engine.checkpoint import payload_digest

    last = run / "checkpoints" / "last.pt"
    raw = torch.load(last, weights_only=True)
    raw.pop("digest")
    _crafted(raw, change)
    torch.save({**raw, "digest": payload_digest(raw)}, last)
    before = files(run)
    assert main(["train", "--resume", str(run), "--max-steps", "12"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"resnetlab train: error: {last}") and said in line, line
    assert files(run) == before
    assert load_checkpoint(last).artifact.weights  # eval, predict and --init use the weights: not refused


def test_a_resume_is_judged_by_the_precision_auto_resolved_to(tmp_path, monkeypatch, capsys):
    """`auto` resolved again where it means another precision (a requeue onto another kind of node) went
    on in fp32 after bf16 without a word; `--precision bf16` on a run whose auto was bf16 was warned
    about as a change, though the run goes on exactly."""
    from resnetlab.engine import runtime

    recipe = tmp_path / "auto.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(tiny_config(("train.precision", "auto"),
                                                                ("train.eval_every", 4)))))
    machine = {"precision": "bf16"}
    monkeypatch.setattr(runtime, "resolve_precision", lambda words, device: machine["precision"]
                        if words == "auto" else words)
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--out", str(run), "--max-steps", "4"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.loop.runtime["precision"] == "bf16"
    shutil.copytree(run, tmp_path / "same")
    machine["precision"] = "fp32"  # another machine
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "8"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line and "precision" in line]
    assert warned == ["resnetlab train: warning: --resume goes on with precision: 'bf16' -> 'fp32' ("
                      "`auto` is resolved for each machine): they apply from the current step on, so the run is no "
                      "longer the one an uninterrupted run would be; --precision, --device and the train.* keys set "
                      "the run's own values"]
    assert main(["train", "--resume", str(tmp_path / "same"), "--max-steps", "8", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err  # the precision it trained with: no change to warn about
    assert "cpu bf16" in err and not [line for line in err.splitlines() if "warning" in line and "precision" in line]
