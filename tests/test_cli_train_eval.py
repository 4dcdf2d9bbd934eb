"""`resnetlab train` and `resnetlab eval` end to end on synthetic data, errors, and signals."""
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.engine import load_checkpoint
from resnetlab.engine.datadir import data_overrides
from resnetlab.errors import UserError
from test_engine_train import tiny_config


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 16)))))
    return str(path)


def test_train_then_eval_json(tmp_path, recipe, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", recipe, "--out", str(out), "--lr", "0.05", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert load_checkpoint(out / "checkpoints" / "last.pt").artifact.config["optim"]["lr"] == 0.05
    assert main(["eval", str(out), "--json"]) == 0  # a run directory means its best.pt
    report = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "top1_err", "top5_err", "n", "protocol"} <= set(report)
    assert report["checkpoint"].endswith("best.pt") and report["protocol"] == "center"
    assert {k: report[k] for k in summary["test"]["best"]} == summary["test"]["best"] and report["n"] == 160
    assert main(["eval", str(out / "checkpoints" / "last.pt"), "--split", "val", "--protocol", "10crop"]) == 0
    assert "n=32" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--set", "optim.momentun=0.9"], ["optim.momentun", "valid keys in optim"]),
    (["--set", "schedule.kind=exponential"], ["schedule.kind", "step, cosine"]),
    (["--data", "/no/such/dir"], ["--data /no/such/dir", "no such directory"]),
    (["--batch-size", "1000"], ["batch", "1000"]),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, recipe, capsys, argv, words):
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "run")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("resnetlab train: error:") and all(w in err for w in words), err


def test_missing_dataset_and_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--recipe", "cifar10_resnet20", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "cifar-10" in capsys.readouterr().err  # says what it looked for
    assert main(["eval", str(tmp_path / "nothing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_data_dir_kind_is_inferred(tmp_path):
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    assert ("data.dataset", "folder") in data_overrides(str(tmp_path / "imgs"), "cifar10")
    assert data_overrides(str(tmp_path / "cifar"), "folder")[0] == ("data.dataset", "cifar10")
    assert data_overrides(str(tmp_path / "cifar" / "cifar-10-batches-py"), "folder") == [
        ("data.dataset", "cifar10"), ("data.root", str(tmp_path / "cifar"))]
    with pytest.raises(UserError, match="no such directory"):
        data_overrides(str(tmp_path / "nope"), "folder")
    (tmp_path / "recipe.yaml").write_text("")
    with pytest.raises(UserError, match=r"recipe.yaml: a file, not a folder \(expected a folder"):
        data_overrides(str(tmp_path / "recipe.yaml"), "folder")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, recipe, sig, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "resnetlab", "train", "--recipe", recipe, "--out", str(out),
           "--max-steps", "100000", "--set", "train.eval_every=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # the first evaluation (step 4) writes last.pt: training is under way
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    step = load_checkpoint(out / "checkpoints" / "last.pt").training.step
    assert step >= 4 and f"stopped by {sig.name} at step {step}" in stderr and f"train --resume {out}" in stderr
    assert "stopped by" not in stdout  # stdout holds only results
    assert main(["train", "--resume", str(out), "--max-steps", str(step + 2)]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt").training.step == step + 2


def test_train_prints_the_per_class_results_of_at_most_fifty_classes(tmp_path):
    """The summary train prints: past eval's 50-class table, the per-class lists stay in RUN/summary.json."""
    from resnetlab.cli.eval import printed_summary

    def summary(classes):
        report = {"top1": 50.0, "per_class": [{"name": f"c{i}", "images": 2} for i in range(classes)]}
        return {"steps": 3, "test": {"best": report, "last": dict(report)}}

    assert printed_summary(summary(50), tmp_path) == summary(50)
    shown = printed_summary(summary(51), tmp_path)
    assert shown["steps"] == 3 and set(shown["test"]) == {"best", "last"}
    assert all(r == {"top1": 50.0, "per_class_in": str(tmp_path / "summary.json")} for r in shown["test"].values())
    assert printed_summary({"steps": 0}, tmp_path) == {"steps": 0}
