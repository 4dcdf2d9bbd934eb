"""A report on a full disk or into a folder that cannot be made: one line, and no half report left;
copies and resumes of one run counted once among its config's seeds; a metrics.jsonl whose last
record a crash cut off is read without it (one warning), and resumed."""
import errno
import json

import matplotlib.figure
import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.errors import ResnetlabWarning
from resnetlab.files import storage_errors
from resnetlab.reports import report, tables
from test_engine_train import tiny_config
from test_report import PNG_MAGIC, make_run


def _disk_full_in_savefig(monkeypatch):
    """matplotlib's writer gets a few bytes out, then the disk is full (what PIL's close raised on a full tmpfs)."""
    def savefig(fig, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_MAGIC)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_full_disk_leaves_no_empty_png_and_no_new_report_folder(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "r1", test_err=9.0)
    _disk_full_in_savefig(monkeypatch)
    for _ in range(2):  # a second try neither finds a half report nor numbers a report-2/ beside it
        assert main(["report", str(run)]) == 2
        assert _one_error_line(capsys) == (f"resnetlab report: error: could not write {run / 'report' / 'curves.png'} "
                                           "(No space left on device); nothing was written there")
        assert sorted(p.name for p in run.iterdir()) == ["classes.json", "config.yaml", "metrics.jsonl", "summary.json"]


def test_a_report_failing_after_its_figures_takes_them_back(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "r1", test_err=9.0)
    real = report.write_text_atomic

    def full_at_the_csv(path, text):
        if path.name == "metrics.csv":
            with storage_errors(path):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(report, "write_text_atomic", full_at_the_csv)
    assert main(["report", str(run)]) == 2
    assert "metrics.csv (No space left on device); nothing was written there" in _one_error_line(capsys)
    assert not (run / "report").exists()  # not a report.md and curves.png without their metrics.csv
    monkeypatch.setattr(report, "write_text_atomic", real)
    assert main(["report", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    monkeypatch.setattr(report, "write_text_atomic", full_at_the_csv)
    assert main(["report", str(run)]) == 2  # a refresh that fails keeps the report that was there
    assert "the previous metrics.csv is intact" in _one_error_line(capsys)
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(before)


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path, "r1", test_err=9.0)
    (tmp_path / "blocked").write_text("a file where the report's parent folder must go")
    out = tmp_path / "blocked" / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert _one_error_line(capsys) == (f"resnetlab report: error: could not write {out / 'report.md'} "
                                       "(Not a directory); nothing was written there")


def test_copies_and_resumes_of_one_run_count_once_among_the_seeds(tmp_path):
    first = make_run(tmp_path, "r-seed0", test_err=8.0)
    copy = make_run(tmp_path, "r-seed0-copy", test_err=8.0)
    resumed_further = make_run(tmp_path, "r-seed1-resumed", seed=1, test_err=10.0, train_errs=(50.0, 30.0, 20.0))
    stopped_early = make_run(tmp_path, "r-seed1", seed=1, train_errs=(50.0,))
    runs = [tables.load_run(d) for d in (first, copy, stopped_early, resumed_further)]
    with pytest.warns(ResnetlabWarning, match=r"left out 2 run\(s\) repeating the config and seed") as caught:
        groups = tables.group_runs(runs)
    assert len(caught) == 1 and str(copy) in str(caught[0].message) and str(stopped_early) in str(caught[0].message)
    [members] = groups.values()
    assert [r.path for r in members] == [first, resumed_further]  # of each seed the run that got furthest
    assert tables.group_stats(members)["test_err"] == tables.Stat(9.0, pytest.approx(2 ** 0.5), 8.0, 2)


def test_the_report_command_pools_copies_once(tmp_path, capsys):
    for name in ("a", "b", "c"):
        make_run(tmp_path / "copies", name, test_err=8.0)
    assert main(["report", str(tmp_path / "copies"), "--out", str(tmp_path / "rep")]) == 0
    assert "| a | resnet20 | 1 | 200 | 30.00 |" in (tmp_path / "rep" / "report.md").read_text()
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("resnetlab report: warning: left out 2 run(s)")


CUT = '{"step": 300, "train_err": 2'  # what a training killed in the middle of writing a record leaves


def test_a_cut_off_last_metrics_record_is_left_out_with_one_warning(tmp_path, capsys):
    run = make_run(tmp_path, "r1", test_err=9.0)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(CUT)
    assert main(["report", str(run)]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == [
        f"resnetlab report: warning: {run / 'metrics.jsonl'}: the last record (line 3) is cut off (a training was "
        "killed while writing it, or is writing it now); using the 2 records before it"]
    with pytest.warns(ResnetlabWarning, match="the last record"):
        assert [m.step for m in tables.load_run(run).metrics] == [100, 200]
    assert (run / "report" / "metrics.csv").read_text().count("\n") == 3  # header + the 2 whole records


def test_a_broken_metrics_line_before_others_is_one_line_that_blames_no_one(tmp_path, capsys):
    run = make_run(tmp_path, "r1", test_err=9.0)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(f"{lines[0]}\n{CUT}\n{lines[1]}\n")  # cut short, then appended to
    assert main(["report", str(run)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"resnetlab report: error: {run / 'metrics.jsonl'} line 2 is not a whole JSON record (")
    assert line.endswith("yet 1 record follows it: the file is damaged (a write cut short and then appended to, or "
                         "an edit); remove or repair that line")
    (run / "metrics.jsonl").write_text(f"{lines[0]}\n{CUT}{lines[1]}\n")  # the cut line appended to: last, but whole
    assert main(["report", str(run)]) == 2
    assert "line 2 is not a whole JSON record (" in _one_error_line(capsys)
    (run / "metrics.jsonl").write_text(f"{lines[0]}\n{lines[1]}\n")
    (run / "summary.json").write_text('{"steps": 200, "test": ')
    assert main(["report", str(run)]) == 2
    assert _one_error_line(capsys) == (
        f"resnetlab report: error: {run / 'summary.json'} is not valid JSON (Expecting value at line 1 column 24): "
        "the file is damaged; restore it, or delete it to treat the run as unfinished")


def test_resume_drops_a_cut_off_metrics_record_and_writes_it_again(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 4), ("train.eval_every", 2)))))
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--out", str(run)]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write(CUT)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "line 3) is cut off" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--max-steps", "6"]) == 0
    capsys.readouterr()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert main(["report", str(run), "--out", str(tmp_path / "rep2")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("analysis", ["--responses", "--gradients"])
def test_the_analyses_of_a_run_whose_data_folder_moved_say_so_and_name_data(tmp_path, capsys, analysis):
    """It said the moved folder had no class folders."""
    from test_predict_synthetic import train_tiny_run

    run = train_tiny_run(tmp_path)
    (tmp_path / "data").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["report", str(run), analysis, "--out", str(tmp_path / "rep")]) == 2
    assert _one_error_line(capsys) == (f"resnetlab report: error: the run's data folder {tmp_path / 'data'} no longer "
                                       "exists; pass --data DIR, the folder where its images are now")
    assert main(["report", str(run), analysis, "--data", str(tmp_path / "moved"), "--out", str(tmp_path / "rep")]) == 0


@pytest.mark.parametrize("kind", ["missing", "fifo"])
def test_a_run_without_readable_metrics_is_reported_with_a_warning_and_never_opened(tmp_path, capsys, kind):
    """A report without the run's curves said nothing; a FIFO metrics.jsonl must not be opened (it would wait)."""
    import os

    run = make_run(tmp_path, "r")
    (run / "metrics.jsonl").unlink()
    if kind == "fifo":
        os.mkfifo(run / "metrics.jsonl")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    why = "is not a regular file" if kind == "fifo" else "does not exist (no evaluation yet)"
    assert (f"resnetlab report: warning: {run / 'metrics.jsonl'} {why}: the report has no curves of this run"
            in capsys.readouterr().err)
