"""Experiment plans, the skip / resume / refuse logic of the runner, and one real synthetic run."""
import json
import signal
import sys

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import config_to_dict, save_config
from resnetlab.errors import UserError
from resnetlab.reports import experiments as ex


def test_plan_is_models_x_variants_x_seeds_in_order():
    runs = ex.plan_runs(ex.get_experiment("degradation"), ["plain20", "resnet20"], [0, 1])
    assert [r.name for r in runs] == ["plain20-seed0", "plain20-seed1", "resnet20-seed0", "resnet20-seed1"]
    assert [r.recipe for r in runs] == ["cifar10_plain20"] * 2 + ["cifar10_resnet20"] * 2
    shortcuts = ex.plan_runs(ex.get_experiment("shortcuts"), seeds=[3])
    assert [r.name for r in shortcuts] == ["resnet32-shortcutA-seed3", "resnet32-shortcutB-seed3", "resnet32-shortcutC-seed3"]
    assert ex.run_config(shortcuts[1], None).model.kwargs == {"shortcut": "B"}


def test_imagenet_plain_twin_uses_the_residual_recipe_with_its_own_model():
    spec = ex.plan_runs(ex.get_experiment("degradation-imagenet"), ["plain34"])[0]
    cfg = ex.run_config(spec, None)
    assert spec.recipe == "imagenet_resnet34" and cfg.model.name == "plain34"


@pytest.mark.parametrize("models, seeds, match", [(["resnet21"], [0], "unknown model"), (None, [0, 0], "seed twice"),
                                                  (None, [], "at least one"), ([], None, "--models is empty"),
                                                  (["resnet20", "resnet20"], None, "model twice")])
def test_plan_refuses_bad_input(models, seeds, match):
    with pytest.raises(UserError, match=match):
        ex.plan_runs(ex.get_experiment("depth"), models, seeds)


def test_compressed_schedule_drops_lr_at_half_and_three_quarters():
    steps = dict(ex.compressed_schedule(steps=400))
    assert steps["schedule.milestones"] == [200, 300] and steps["schedule.max_steps"] == 400
    assert steps["schedule.epochs"] is None and steps["schedule.milestones_unit"] == "steps"
    epochs = dict(ex.compressed_schedule(epochs=4))
    assert epochs["schedule.milestones"] == [2.0, 3.0] and epochs["schedule.epochs"] == 4
    for bad in ({}, {"epochs": 2, "steps": 10}, {"steps": 0}):
        with pytest.raises(UserError):
            ex.compressed_schedule(**bad)


class FakeTrainer:
    """Stands in for train_and_evaluate: records calls, writes what a finished run leaves behind."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, cfg, run_dir, resume=False):
        self.calls.append((run_dir.name, resume))
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
        if run_dir.name == self.fail_on:
            raise KeyboardInterrupt  # the run stops part-way: config and checkpoint, no summary
        (run_dir / "summary.json").write_text(json.dumps({"steps": cfg.schedule.max_steps}))


def _runs():
    return ex.plan_runs(ex.get_experiment("degradation"), ["plain20", "resnet20"], [0], ex.compressed_schedule(steps=8))


def test_runner_skips_finished_and_resumes_interrupted(tmp_path):
    first = FakeTrainer(fail_on="resnet20-seed0")
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(_runs(), None, tmp_path, train_fn=first)
    assert first.calls == [("plain20-seed0", False), ("resnet20-seed0", False)]
    assert ex.run_status(tmp_path / "plain20-seed0", ex.run_config(_runs()[0], None)) == "done"
    assert ex.run_status(tmp_path / "resnet20-seed0", ex.run_config(_runs()[1], None)) == "partial"
    second = FakeTrainer()
    dirs = ex.run_experiment(_runs(), None, tmp_path, train_fn=second)
    assert second.calls == [("resnet20-seed0", True)]  # plain20 skipped, resnet20 resumed
    assert [d.name for d in dirs] == ["plain20-seed0", "resnet20-seed0"]
    third = FakeTrainer()
    ex.run_experiment(_runs(), None, tmp_path, train_fn=third)
    assert third.calls == []


def test_runner_refuses_a_directory_of_another_config_before_training_anything(tmp_path):
    ex.run_experiment(_runs(), None, tmp_path, train_fn=FakeTrainer())
    changed = [ex.RunSpec(r.name, r.recipe, r.overrides + (("optim.lr", 0.05),), r.seed) for r in _runs()]
    trainer = FakeTrainer()
    with pytest.raises(UserError, match="different config"):
        ex.run_experiment(changed[:1] + [ex.RunSpec("new-run", "cifar10_resnet20")], None, tmp_path, train_fn=trainer)
    assert trainer.calls == []


def test_status_reads_the_saved_config(tmp_path):
    cfg = ex.run_config(_runs()[0], None)
    assert ex.run_status(tmp_path / "nothing", cfg) == "new"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert ex.run_status(tmp_path / "r", cfg) == "new"  # config written, crashed before any checkpoint


SYNTHETIC = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_size=48", "--set", "data.val_size=16",
             "--set", "optim.batch_size=16", "--set", "train.eval_every=1", "--set", "train.precision=fp32"]


def test_experiment_command_trains_reports_and_skips_on_rerun(tmp_path, capsys):
    argv = ["experiment", "degradation", "--models", "plain20,resnet20", "--steps", "2", "--data", str(tmp_path),
            "--out", str(tmp_path / "exp"), *SYNTHETIC]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "[2/2] resnet20-seed0: training" in out.err
    for name in ("report.md", "degradation.png", "layer_responses.png", "gradient_flow.png"):
        assert (tmp_path / "exp" / name).stat().st_size > 0
    metrics = [json.loads(line) for line in (tmp_path / "exp" / "plain20-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["train_err"] is not None for m in metrics)
    assert main(argv) == 0
    assert capsys.readouterr().err.count("already finished, skipping") == 2


def test_experiment_command_errors(tmp_path, capsys):
    assert main(["experiment", "depth", "--out", str(tmp_path), "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    for seeds in ("0,,1", "0,1,", "\u0663", "1_0", "-1"):  # an empty item is not dropped; '٣' is not 3
        assert main(["experiment", "depth", "--out", str(tmp_path), "--dry-run", "--seeds", seeds]) == 2
        assert f"--seeds {seeds!r}: " in capsys.readouterr().err
    code, _, err = _cli(capsys, "experiment", "depth", "--out", str(tmp_path), "--dry-run", "--models", "resnet20,,resnet32")
    assert code == 2 and "--models 'resnet20,,resnet32': an empty item between commas" in err
    assert main(["experiment", "depth", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def _cli(capsys, *argv):
    """(exit status, stdout, stderr) of `resnetlab ARGV`; argparse's refusals end in SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag, value, said", [("--steps", "0", "--steps: must be at least 1, got 0"),
                                               ("--epochs", "0", "--epochs: must be at least 1, got 0"),
                                               ("--models", "", "--models is empty"),
                                               ("--seeds", "", "--seeds is empty")])
def test_zero_or_empty_is_refused_not_taken_for_the_default(tmp_path, capsys, flag, value, said):
    code, out, err = _cli(capsys, "experiment", "depth", "--out", str(tmp_path / "exp"), "--dry-run", flag, value)
    assert (code, out) == (2, "") and said in err and len(err.splitlines()) == 1


@pytest.fixture
def fake_engine(monkeypatch):
    """The experiment command's runs made by a FakeTrainer; returns it."""
    import resnetlab.engine

    trainer = FakeTrainer()
    monkeypatch.setattr(resnetlab.engine, "train_and_evaluate", trainer)
    return trainer


def test_another_experiment_is_refused_in_an_out_that_holds_one(tmp_path, capsys, fake_engine):
    out, data = tmp_path / "exp1", tmp_path / "data"
    data.mkdir()
    assert main(["experiment", "depth", "--models", "resnet20", "--seeds", "0", "--steps", "2", "--data", str(data),
                 "--out", str(out)]) == 0
    report, _ = (out / "report.md").read_text(), capsys.readouterr()
    for extra in ([], ["--dry-run"]):
        code, _, err = _cli(capsys, "experiment", "shortcuts", "--seeds", "0", "--steps", "2", "--data", str(data),
                            "--out", str(out), *extra)
        assert code == 2 and err == f"resnetlab experiment: error: {out} holds the depth experiment; choose another " \
            "--out for shortcuts (a report is never written over one of other runs)\n"
    assert [name for name, _ in fake_engine.calls] == ["resnet20-seed0"] and (out / "report.md").read_text() == report
    (out / "experiment.json").unlink()  # an --out from before the experiment was recorded: known by its report
    assert _cli(capsys, "experiment", "shortcuts", "--out", str(out), "--dry-run")[0] == 2


def test_an_out_the_experiment_cannot_use_is_refused_before_anything_is_written(tmp_path, capsys, fake_engine):
    """A file, a folder of other files (its report.md would be replaced), one inside the data: the dry
    run says so too."""
    data = tmp_path / "data"
    (data / "train" / "ant").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    (tmp_path / "file").write_text("mine")
    for out, words in [(tmp_path / "file", "is a file; an experiment's --out is a folder for its runs and report"),
                       (tmp_path / "mine", "already holds other files (report.md) and no experiment; give a new or "
                                           "empty folder"),
                       (data / "exp", f"is inside the data folder {data}; the run's files would be read as data")]:
        for extra in ([], ["--dry-run"]):
            code, _, err = _cli(capsys, "experiment", "depth", "--models", "resnet20", "--seeds", "0", "--steps", "2",
                                "--data", str(data), "--out", str(out), *extra)
            assert code == 2 and err.startswith(f"resnetlab experiment: error: --out {out} {words}"), err
    assert fake_engine.calls == [] and (tmp_path / "mine" / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file", "mine"] and not (data / "exp").exists()


def test_the_runner_records_its_experiment_before_training(tmp_path):
    trainer = FakeTrainer(fail_on="plain20-seed0")
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(_runs(), None, tmp_path, train_fn=trainer, experiment="degradation")
    with pytest.raises(UserError, match="holds the degradation experiment"):  # stopped before any report was written
        ex.run_experiment(_runs(), None, tmp_path, train_fn=trainer, experiment="gradient-flow")
    assert trainer.calls == [("plain20-seed0", False)]


@pytest.mark.parametrize("stop_where", ["training", "report"])
def test_a_stopped_experiment_says_how_to_continue(tmp_path, capsys, monkeypatch, fake_engine, stop_where):
    import resnetlab.engine
    from resnetlab.engine import TrainingInterrupted
    from resnetlab.reports import report

    (tmp_path / "data").mkdir()
    argv = ["experiment", "depth", "--models", "resnet20", "--seeds", "0", "--steps", "2", "--data",
            str(tmp_path / "data"), "--out", str(tmp_path / "exp")]
    monkeypatch.setattr(sys, "argv", ["resnetlab", *argv])
    checkpoint = tmp_path / "exp" / "resnet20-seed0" / "checkpoints" / "last.pt"

    def stop(*args, **kwargs):
        if stop_where == "training":
            raise TrainingInterrupted(signal.SIGINT, 1, checkpoint)
        raise KeyboardInterrupt  # a Ctrl-C after the runs, while the report is drawn

    monkeypatch.setattr(*((resnetlab.engine, "train_and_evaluate") if stop_where == "training" else
                          (report, "write_report")), stop)
    code, out, err = _cli(capsys, *argv)
    said = {"training": f"stopped by SIGINT at step 1; checkpoint saved to {checkpoint}",
            "report": "stopped by SIGINT; finished runs and saved checkpoints are kept"}[stop_where]
    assert code == 130 and out == "" and err.splitlines()[-1] == (
        f"resnetlab experiment: {said}. Continue with: resnetlab {' '.join(argv)} (finished runs are skipped, a "
        "stopped one resumes)")


@pytest.mark.parametrize("argv, words", [
    (["--set", "model.name=resnet32"], "--set model.name would give every run of the experiment the same value (the run "
                                       "folders' names and the report would not say so); use --models"),
    (["--seeds", "0,1", "--set", "train.seed=7"], "--set train.seed would give every run of the experiment the same "
                                                  "value (the run folders' names and the report would not say so); use "
                                                  "--seeds"),
    (["--models", "resnet50"], "--models: the depth experiment cannot run resnet50 (it has no recipe cifar10_resnet50); "
                               "it runs resnet18, resnet20,"),
    (["--epochs", "4", "--set", "schedule.epochs=10"],  # the --set won, with the milestones of a 4-epoch schedule
     "--epochs and --set schedule.epochs both set the length of the runs; keep one"),
    (["--steps", "40", "--set", "schedule.max_steps=100"], "--steps and --set schedule.max_steps both set the length"),
])
def test_values_each_run_sets_itself_are_refused_in_one_line(tmp_path, capsys, argv, words):
    """--set model.name trained resnet32 in resnet20-seed0/ and --set train.seed was ignored; a model without
    the experiment's recipe was an unknown recipe the user never named."""
    code, _, err = _cli(capsys, "experiment", "depth", "--out", str(tmp_path / "exp"), "--dry-run", *argv)
    assert code == 2 and err.startswith(f"resnetlab experiment: error: {words}"), err
    assert list(tmp_path.iterdir()) == []
