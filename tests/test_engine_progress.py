"""What a run writes off a terminal: progress lines every log_every steps or every ~30 s, with an
ETA (the clock is injected, so nothing here waits or depends on the machine's speed), and
metrics.csv beside metrics.jsonl."""
import csv
import io
import json

import pytest
from test_engine_train import tiny_config

from resnetlab.engine import MetricsRow, train_and_evaluate
from resnetlab.engine.logger import RunLogger
from resnetlab.engine.metrics_csv import metrics_csv, write_metrics_csv
from resnetlab.engine.progress import ProgressLines, eta_seconds, format_duration, line_due


@pytest.mark.parametrize("step, now, due", [(149, 129.9, False), (150, 101.0, True), (120, 130.0, True)])
def test_a_line_is_due_after_n_steps_or_30_seconds_whichever_first(step, now, due):
    assert line_due(step, now, last_step=100, last_time=100.0, every_steps=50) is due


def test_eta_is_the_sessions_mean_step_time_times_the_steps_left():
    assert eta_seconds(step=150, total=1150, start_step=100, start_time=10.0, now=35.0) == 500.0  # 0.5 s/step
    assert eta_seconds(step=100, total=1150, start_step=100, start_time=10.0, now=35.0) is None
    assert [format_duration(s) for s in (None, 42.4, 192, 15120)] == ["?", "42s", "3m12s", "4h12m"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_log_file_gets_lines_by_steps_and_by_time():
    stream, clock = io.StringIO(), Clock()  # StringIO is not a terminal
    log = RunLogger(None, True, total_steps=1000, start_step=0, stream=stream, log_every=50, clock=clock)
    clock.now += 25.0
    log.progress(50, loss=1.23456, err=45.3125, lr=0.1, img_s=612.4)  # a log point, 50 steps: due
    clock.now += 20.0
    assert not log.line_due(60)  # 10 steps, 20 s
    clock.now += 10.5
    assert log.line_due(61)  # 30.5 s since the last line: slow steps still get one
    log.progress_line(61, loss=1.0, err=40.0, lr=0.05, img_s=20.0)
    clock.now += 1.0
    log.progress(100, loss=0.9, err=30.0, lr=0.05, img_s=20.0)  # 39 steps and 1 s after the last line: not due
    assert stream.getvalue().splitlines() == [
        "step 50/1000 (5.0%)  loss 1.235  err 45.31%  lr 0.1  612 img/s  eta 7m55s",  # 25 s / 50 steps x 950
        "step 61/1000 (6.1%)  loss 1  err 40.00%  lr 0.05  20 img/s  eta 14m14s",  # 55.5 s / 61 steps x 939 = 854 s
    ]


def test_a_terminal_gets_the_bar_and_no_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = Clock()
    log = RunLogger(None, True, total_steps=100, start_step=0, stream=Terminal(), log_every=10, clock=clock)
    clock.now += 100.0
    assert not log.line_due(50)
    log.close()
    assert not RunLogger(None, False, 100, 0, stream=io.StringIO()).line_due(50)  # ranks other than 0: silent


def test_a_terminal_of_zero_columns_gets_the_lines_tqdm_would_not_draw():
    """A pty given no size (`script`, some `docker -t`): tqdm drew nothing, and the lines were off too."""
    import fcntl
    import os
    import struct
    import termios

    leader, follower = os.openpty()  # a new pty is 0 x 0 until someone sets its size
    try:
        with open(follower, "w", closefd=False) as terminal:
            log = RunLogger(None, True, total_steps=100, start_step=0, stream=terminal, log_every=10, clock=Clock())
            assert log.bar is None and log.line_due(10)
            log.close()
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            log = RunLogger(None, True, total_steps=100, start_step=0, stream=terminal, log_every=10, clock=Clock())
            assert log.bar is not None and not log.line_due(10)
            log.close()
    finally:
        os.close(leader)
        os.close(follower)


def test_resumed_session_counts_its_eta_from_where_it_started():
    clock = Clock()
    lines = ProgressLines(total=1000, start_step=900, every_steps=10, clock=clock)
    clock.now += 10.0
    assert lines.line(910, 0.5, 10.0, 0.001, 100.0).endswith("eta 1m30s")  # 1 s/step x 90 left, not 910 steps' worth


def test_a_session_resumed_between_log_points_keeps_the_runs_grid():
    """Stopped at step 9 with log_every 5: the resumed lines came at 14, 19, ... each of 4 steps, and the
    window saved at the stop (steps 6-9) was never shown."""
    lines = ProgressLines(total=100, start_step=9, every_steps=5, clock=Clock())
    assert [step for step in range(10, 21) if lines.due(step) and lines.line(step, 1, 1, 1, 1)] == [10, 15, 20]


def test_training_keeps_metrics_csv_equal_to_metrics_jsonl(tmp_path):
    train_and_evaluate(tiny_config(("schedule.max_steps", 8), ("train.eval_every", 4), ("data.val_size", 0)), tmp_path,
                       stream=io.StringIO())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 8] and len(records) == 2
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "train_err", "images_per_s", "elapsed_s"]  # no val split
    assert all(float(row[k]) == rec[k] for row, rec in zip(rows, records) for k in row)  # full precision


def test_metrics_csv_columns_blanks_and_a_cut_line(tmp_path):
    records = [{"step": 1, "lr": 0.1, "val_top1_err": None, "extra": [1, 2]}, {"step": 2, "train_err": 5.0}]
    assert metrics_csv(records).splitlines() == ["epoch,step,lr,train_err,extra", ',1,0.1,,"[1, 2]"', ",2,,5.0,"]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lr": 0.5}\n{"step": 2, "lr"')  # a crash mid-line
    assert write_metrics_csv(tmp_path).read_text() == "epoch,step,lr\n,1,0.5\n"
    assert write_metrics_csv(tmp_path / "nothing") is None


def test_a_metrics_csv_that_cannot_be_written_does_not_stop_the_run(tmp_path):
    (tmp_path / "metrics.csv").mkdir()  # the rename onto it fails (EISDIR): a storage error, not a crash
    stream = io.StringIO()
    log = RunLogger(tmp_path, True, total_steps=4, start_step=0, stream=stream)
    row = MetricsRow(epoch=1.0, step=2, lr=0.1)
    log.record(row)
    assert MetricsRow.from_dict(json.loads((tmp_path / "metrics.jsonl").read_text())) == row
    assert "metrics.csv" in stream.getvalue() and "metrics.jsonl has every record" in stream.getvalue()
