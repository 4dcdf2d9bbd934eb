"""Reports of runs that did not finish, of an experiment folder that grew over several commands, and a
report stopped half-way: unfinished runs are never pooled with finished ones, a report covers every run
of its experiment, and its files are replaced as a set."""
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import yaml

from resnetlab.cli import main
from resnetlab.errors import ResnetlabWarning
from resnetlab.reports import table6, tables
from resnetlab.reports.report import write_report
from test_report import make_run


def run_of(root, name, model="resnet20", seed=0, errs=(50.0, 30.0), test_err=None, max_steps=200):
    """A hand-made run of a `max_steps` schedule; finished (summary.json) when `test_err` is given."""
    run = make_run(root, name, model=model, seed=seed, test_err=test_err, train_errs=errs)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["schedule"]["max_steps"] = max_steps
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _groups(*dirs):
    return tables.group_runs([tables.load_run(d) for d in dirs])


def test_an_unfinished_run_is_a_row_of_its_own_never_pooled_with_finished_seeds(tmp_path):
    """It was averaged with the finished seed: 50.81 ± 25.99 over step 100 and step 200, "2 seeds",
    and a Table 6 row of one test error counted as 2 runs."""
    done = run_of(tmp_path, "resnet20-seed0", test_err=9.0)
    stopped = run_of(tmp_path, "resnet20-seed1", seed=1, errs=(70.0,))
    groups = _groups(done, stopped)
    assert list(groups) == ["resnet20", "resnet20-seed1"]
    table = tables.results_table(groups)
    assert "| resnet20 | resnet20 | 1 | 200 | 30.00 | 0.30 | 35.00 | 9.00 | 10.00 | 9.00 |" in table
    assert "| resnet20-seed1 | resnet20 | 1 | 100 of 200, not finished | 70.00 | 0.70 | 75.00 | – | – | – |" in table
    assert table6.depth_table(groups).splitlines()[2:] == ["| resnet20 | resnet20 | 0.27M | 9.00 | 1 | 8.75 |"]
    text = write_report([done, stopped], tmp_path / "rep")[0].read_text()
    assert ("- `resnet20-seed1`: not finished; its last evaluation was at step 100 of 200 (numbers from it, no "
            "test numbers)") in text


def test_seeds_count_the_values_behind_each_number(tmp_path):
    """A finished run without test numbers (no test split) beside one with them: the cell says n."""
    dirs = [run_of(tmp_path, "r-seed0", test_err=9.0), run_of(tmp_path, "r-seed1", seed=1, test_err=11.0)]
    summary = json.loads((dirs[1] / "summary.json").read_text())
    (dirs[1] / "summary.json").write_text(json.dumps({**summary, "test": {}}))
    table = tables.results_table(_groups(*dirs))
    assert "| r | resnet20 | 2 | 200 | 30.00 ± 0.00 | 0.30 ± 0.00 | 35.00 ± 0.00 | 9.00 (n=1) | 10.00 (n=1) | 9.00 |" in table


def test_a_run_without_evaluations_says_why_and_no_raw_warning_leaks(tmp_path, capsys):
    """A row of dashes with no word why, an empty "plain nets" panel and matplotlib's
    "No artists with labels found to put in legend" on stderr."""
    done = run_of(tmp_path / "exp", "resnet20-seed0", test_err=9.0)
    early = run_of(tmp_path / "exp", "plain20-seed0", model="plain20")
    (early / "metrics.jsonl").write_text("")  # stopped before its first evaluation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = write_report([done, early], tmp_path / "rep")
    assert [str(w.message) for w in caught if not issubclass(w.category, ResnetlabWarning)] == []
    assert "degradation.png" in [p.name for p in paths]
    text = paths[0].read_text()
    assert "| plain20-seed0 | plain20 | 1 | – of 200, not finished | – |" in text
    assert "- `plain20-seed0`: not finished; no evaluation yet (the first comes at the end of the first epoch)" in text


def _stop_at(trainer, name, step):
    """The FakeTrainer of test_experiments, with a metrics row per run; `name` stops at `step`."""
    def train(cfg, run_dir, resume=False):
        run_dir.mkdir(parents=True, exist_ok=True)
        row = {"step": step if run_dir.name == name else cfg.schedule.max_steps, "train_err": 40.0 + cfg.train.seed,
               "val_top1_err": 50.0, "lr": 0.1}
        (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        trainer(cfg, run_dir, resume)
        (run_dir / "summary.json").write_text(json.dumps({"steps": 2, "test": {"last": {"top1_err": 60.0}}}))
    return train


def _experiment(tmp_path, *argv):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return main(["experiment", *argv, "--steps", "2", "--data", str(data), "--out", str(tmp_path / "exp")])


def test_a_rerun_with_fewer_models_reports_every_run_of_the_experiment(tmp_path, monkeypatch, capsys):
    """README: "the same with --seeds 1,2 adds two more seeds". The report had only the last command's runs."""
    import resnetlab.engine
    from test_experiments import FakeTrainer

    monkeypatch.setattr(resnetlab.engine, "train_and_evaluate", _stop_at(FakeTrainer(), None, 0))
    argv = ["degradation-imagenet", "--seeds", "0"]
    assert _experiment(tmp_path, *argv, "--models", "plain18,resnet18") == 0
    assert _experiment(tmp_path, "degradation-imagenet", "--models", "resnet18", "--seeds", "1") == 0
    exp = tmp_path / "exp"
    text = (exp / "report.md").read_text()
    assert "| plain18 | plain18 | 1 |" in text and "| resnet18 | resnet18 | 2 | 2 | 40.50 ± 0.71 |" in text
    assert json.loads((exp / "report.json").read_text())["runs"] == [
        str((exp / name).resolve()) for name in ("plain18-seed0", "resnet18-seed0", "resnet18-seed1")]
    assert "![Plain (left) vs residual (right)" in text and (exp / "degradation.png").is_file()
    assert "Besides the runs of the command above, those earlier commands left in this folder: plain18-seed0, " \
           "resnet18-seed0." in text
    csv = (exp / "metrics.csv").read_text()
    assert all(name in csv for name in ("plain18-seed0", "resnet18-seed0", "resnet18-seed1"))


def test_a_report_of_a_stopped_experiment_lists_its_missing_and_unfinished_runs(tmp_path, monkeypatch, capsys):
    import resnetlab.engine
    from test_experiments import FakeTrainer

    monkeypatch.setattr(resnetlab.engine, "train_and_evaluate",
                        _stop_at(FakeTrainer(fail_on="resnet20-seed1"), "resnet20-seed1", 1))
    assert _experiment(tmp_path, "depth", "--models", "resnet20", "--seeds", "0,1,2") == 130
    assert main(["report", str(tmp_path / "exp")]) == 0
    text = (tmp_path / "exp" / "report" / "report.md").read_text()
    assert "| resnet20 | resnet20 | 1 | 2 | 40.00 |" in text and "| resnet20-seed1 | resnet20 | 1 | 1 of 2, not finished |" in text
    assert "- `resnet20-seed1`: not finished; its last evaluation was at step 1 of 2" in text
    assert "Planned but not started: `resnet20-seed2`." in text


def test_a_report_no_longer_drawing_a_figure_removes_it_and_nothing_else(tmp_path):
    twins = [run_of(tmp_path / "runs", m, model=m, test_err=9.0) for m in ("plain20", "resnet20")]
    out = tmp_path / "rep"
    write_report(twins, out)
    (out / "notes.txt").write_text("mine")
    (out / "plot.png").write_text("mine too")
    assert {"degradation.png", "final_vs_depth.png"} <= {p.name for p in out.iterdir()}
    write_report(twins[1:], out)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv", "notes.txt", "plot.png", "report.json",
                                                     "report.md"]


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_report_stopped_while_drawing_keeps_the_previous_report_whole(tmp_path, monkeypatch):
    from resnetlab.reports import plots

    twins = [run_of(tmp_path / "runs", m, model=m, test_err=9.0) for m in ("plain20", "resnet20")]
    out = tmp_path / "rep"
    write_report(twins[1:], out)
    before = _contents(out)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_degradation", stop)
    try:
        write_report(twins, out)
    except KeyboardInterrupt:
        pass
    assert _contents(out) == before  # curves.png was the new report's, beside the old report.md


KILL_WHILE_DRAWING = """
import os, signal, sys
from resnetlab.reports import plots, report
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
plots.plot_degradation = killed
report.write_report(sys.argv[2:], sys.argv[1])
"""


def test_a_report_killed_while_drawing_leaves_the_old_one_and_the_next_cleans_up(tmp_path):
    """kill -9 between curves.png and degradation.png left report.md of one report with the PNGs of another."""
    twins = [run_of(tmp_path / "runs", m, model=m, test_err=9.0) for m in ("plain20", "resnet20")]
    out = tmp_path / "rep"
    write_report(twins[1:], out)
    before = _contents(out)
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_DRAWING, str(out), *map(str, twins)], timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert _contents(out) == before
    write_report(twins, out)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # the killed report's folder is taken away
    assert "degradation.png" in os.listdir(out)


def test_a_hand_edited_config_without_its_sections_is_one_line(tmp_path, capsys):
    """`data: oops` or no `train:` section: a KeyError/AttributeError traceback from report."""
    run = run_of(tmp_path / "exp", "resnet20-seed0", test_err=9.0)
    for text, said in (("model: {name: resnet20}\ndata: oops\n", "data"),
                       ("model: {name: resnet20}\nextra: {a: 1}\n", "unknown config section 'extra'")):
        (run / "config.yaml").write_text(text)
        assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"resnetlab report: error: {run / 'config.yaml'}: ") and said in err, err
        assert err.endswith("; was it edited?\n") and err.count("\n") == 1
