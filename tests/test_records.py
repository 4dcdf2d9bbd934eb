"""The typed records of what a run writes (engine/records.py): round trips, refusals in one line,
and checkpoints written by older resnetlab versions.

tests/fixtures/checkpoint_v1_resnet8.pt was written by the code at commit a1c8d4d (before the
records existed): `train_and_evaluate` of FIXTURE_RUN below (ResNet-8, 3 synthetic classes, 16 px,
momentum 0 so the file stays small), with engine.train.save wrapped to copy checkpoints/last.pt
once step 4 of 8 was saved. The same code then gave the EVAL_* and PREDICTED values below for it.
"""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import Config, apply_overrides, config_from_dict
from resnetlab.engine import evaluate_checkpoint, load_checkpoint, train_and_evaluate
from resnetlab.engine.checkpoint import payload_digest, save_checkpoint
from resnetlab.engine.records import Artifact, Checkpoint, LoopState, TrainingState
from resnetlab.engine.run_records import MetricsRow, RunSummary
from resnetlab.engine.schedules import ScheduleState
from resnetlab.errors import UserError
from resnetlab.models import create_model

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1_resnet8.pt"
FIXTURE_RUN = [("model.name", "resnet8"), ("data.dataset", "synthetic"), ("data.synthetic_size", 64),
               ("data.synthetic_classes", 3), ("data.val_size", 16), ("data.augment", "none"), ("data.image_size", 16),
               ("optim.batch_size", 16), ("optim.momentum", 0.0), ("schedule.kind", "constant"),
               ("schedule.max_steps", 8), ("train.eval_every", 2), ("train.precision", "fp32"), ("train.device", "cpu"),
               ("train.seed", 0)]
EVAL_TOP1_ERR, EVAL_TOP5_ERR = 62.5, 0.0  # test split, centre view
PREDICTED = ["class2", "class0", "class1"]  # for the image of random_image(), most likely first
TIMING = ("images_per_s", "elapsed_s")


def random_image(path: Path) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return str(path)


def sample_checkpoint(training: bool = True) -> Checkpoint:
    artifact = Artifact(weights=create_model("resnet8", num_classes=3).state_dict(), model_name="resnet8",
                        model_kwargs={"shortcut": "A"}, num_classes=3, classes=["a", "b", "c"],
                        normalizer={"kind": "channel", "mean": torch.full((3,), 0.47), "std": torch.full((3,), 0.25)},
                        config={"data": {"dataset": "synthetic"}}, input_size=16, eval_resize=18)
    if not training:
        return Checkpoint(artifact)
    loop = LoopState(step=6, schedule=ScheduleState(warmup_done_step=3), best_val_err=12.5, best_step=4, elapsed_s=9.5,
                     window=[1.0, 2.0, 3.0], epoch_meter=[4.0, 5.0, 6.0], reached_target={"step": 4, "val_top1": 87.5})
    row = MetricsRow(epoch=2.0, step=6, lr=0.1, train_loss=0.5, train_err=20.0, val_top1_err=25.0, val_top5_err=0.0,
                     val_top1=75.0, val_top5=100.0, images_per_s=800.0, elapsed_s=9.5)
    return Checkpoint(artifact, TrainingState(loop=loop, epoch=2, optimizer={"state": {}, "param_groups": []},
                                              scaler={}, rng={"torch": torch.get_rng_state()}, last_metrics=row,
                                              num_parameters=74835))


@pytest.mark.parametrize("training", [True, False])
def test_checkpoint_round_trips_through_a_file(tmp_path, training):
    ckpt = sample_checkpoint(training)
    save_checkpoint(ckpt, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert payload_digest(back.to_dict()) == payload_digest(ckpt.to_dict())
    assert back.digest == payload_digest(torch.load(tmp_path / "c.pt", weights_only=True))
    if training:
        assert back.training.loop == ckpt.training.loop and back.training.last_metrics == ckpt.training.last_metrics
        assert (back.training.epoch, back.training.num_parameters) == (2, 74835)
    else:
        assert back.training is None and "optimizer" not in torch.load(tmp_path / "c.pt", weights_only=True)
    assert (back.artifact.model_kwargs, back.artifact.classes, back.artifact.eval_resize) == ({"shortcut": "A"}, ["a", "b", "c"], 18)


def test_metrics_row_and_summary_round_trip_keeping_other_keys():
    row = MetricsRow(epoch=0.5, step=4, lr=0.1, train_err=30.0, extra={"linear_probe": True, "penalty": 1e-3})
    assert MetricsRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    assert row.to_dict() == {"epoch": 0.5, "step": 4, "lr": 0.1, "train_err": 30.0, "val_top1_err": None,
                             "val_top5_err": None, "linear_probe": True, "penalty": 1e-3}
    summary = RunSummary(steps=8, best_val_top1_err=10.0, elapsed_s=3.0, checkpoints={"last": "l.pt"},
                         test={"last": {"top1": 90.0}}, target={"val_top1": 80.0, "reached": None})
    assert RunSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary
    assert list(summary.to_dict()) == ["steps", "best_val_top1_err", "elapsed_s", "checkpoints", "test", "target"]
    probe = RunSummary(linear_probe=True, penalty=0.01, elapsed_s=1.0, checkpoints={}, extra={"note": "kept"})
    assert RunSummary.from_dict(probe.to_dict()) == probe and probe.to_dict()["note"] == "kept"
    assert summary.test_top1("last") == 90.0 and summary.test_top1("best") is None


def test_unknown_keys_of_a_checkpoint_are_kept(tmp_path):
    raw = {**sample_checkpoint().to_dict(), "written_by": "a newer tool"}
    torch.save(raw, tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt.extra == {"written_by": "a newer tool"} and ckpt.to_dict()["written_by"] == "a newer tool"


@pytest.mark.parametrize("record, data, message", [
    (MetricsRow, {"format": "resnetlab-metrics-v2", "step": 1},
     "m.json is a resnetlab-metrics-v2 file; this resnetlab reads resnetlab-metrics-v1: upgrade resnetlab to read it"),
    (RunSummary, {"format": "resnetlab-summary-v3"},
     "m.json is a resnetlab-summary-v3 file; this resnetlab reads resnetlab-summary-v1: upgrade resnetlab to read it"),
    (Checkpoint, {"format": "resnetlab-checkpoint-v2"},
     "m.json is a resnetlab-checkpoint-v2 checkpoint; this resnetlab reads resnetlab-checkpoint-v1: upgrade resnetlab "
     "to read it"),
    (MetricsRow, {"lr": 0.1}, "m.json lacks step: not a complete metrics row"),
    (MetricsRow, {"step": "4"}, "m.json: step is '4', expected int"),
    (MetricsRow, {"step": 4, "train_err": True}, "m.json: train_err is True, expected int or float"),
    (RunSummary, ["not", "a", "dict"], "m.json is not a run summary (found list)"),
    (RunSummary, {"test": 3}, "m.json: test is 3, expected dict"),
])
def test_a_bad_version_or_field_is_one_line_naming_file_and_field(record, data, message):
    with pytest.raises(UserError) as err:
        record.from_dict(data, "m.json")
    assert str(err.value) == message


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("model_name"), " lacks model_name: not a complete resnetlab-checkpoint-v1 checkpoint"),
    (lambda d: d.pop("rng"), " lacks rng: not a complete resnetlab-checkpoint-v1 checkpoint"),
    (lambda d: d.update(num_classes="3"), ": num_classes is '3', expected int"),
    (lambda d: d["metrics"].pop("train_window"), " (metrics) lacks train_window: not a complete checkpoint's metrics"),
    (lambda d: d.update(schedule_state={"unknown": 1}), ": schedule_state does not fit this version's ScheduleState"),
    (lambda d: d.update(classes=["a", "b\nfake line 1.0000", "c"]),
     ": the class name 'b\\nfake line 1.0000' holds a control character: an edited or damaged checkpoint"),
    (lambda d: d.update(normalizer={"kind": "channel", "mean": torch.zeros(3), "std": torch.zeros(3)}),
     ": normalizer state holds a mean or std no training makes (std [0.0, 0.0, 0.0]): the file is damaged"),
    (lambda d: d.update(format="resnetlab-checkpoint-v7"), " is a resnetlab-checkpoint-v7 checkpoint; this resnetlab "
                                                           "reads resnetlab-checkpoint-v1: upgrade resnetlab to read it"),
])
def test_a_damaged_checkpoint_field_is_one_line(tmp_path, edit, message):
    raw = sample_checkpoint().to_dict()  # no digest: an edit an older version could not have noticed
    edit(raw)
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "c.pt")
    assert str(err.value).startswith(f"{tmp_path / 'c.pt'}{message}") and "\n" not in str(err.value)


def test_v1_fixture_loads_for_eval_and_predict(tmp_path):
    from resnetlab.inference.predictor import Predictor, predict_files

    ckpt = load_checkpoint(FIXTURE)
    assert ckpt.digest is not None and ckpt.artifact.model_name == "resnet8" and ckpt.training.step == 4
    assert (ckpt.training.loop.best_step, ckpt.training.loop.best_val_err, ckpt.training.epoch) == (2, 37.5, 1)
    assert ckpt.training.last_metrics.val_top1_err == 56.25 and ckpt.training.num_parameters == 74835
    assert config_from_dict(ckpt.artifact.config) == apply_overrides(Config(), FIXTURE_RUN)
    report = evaluate_checkpoint(str(FIXTURE), device="cpu", precision="fp32")
    assert (report["top1_err"], report["top5_err"], report["n"]) == (EVAL_TOP1_ERR, EVAL_TOP5_ERR, 64)
    predictor = Predictor.from_checkpoint(str(FIXTURE), device="cpu", precision="fp32")
    results, failed = predict_files(predictor, [random_image(tmp_path / "img.png")], topk=3)
    assert [t["class"] for t in results[0]["top"]] == PREDICTED and not failed
    raw = torch.load(FIXTURE, weights_only=True)
    del raw["digest"]  # as resnetlab wrote checkpoints before the digest
    torch.save(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").digest is None


def test_v1_fixture_resumes_like_an_uninterrupted_run(tmp_path):
    cfg = apply_overrides(Config(), FIXTURE_RUN)
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, tmp_path / "resumed" / "checkpoints" / "last.pt")
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        resumed = train_and_evaluate(cfg, tmp_path / "resumed", resume=True)
    # its config predates train.fused_bn: the key's default is no change to warn about
    assert not [w for w in warned if "--resume" in str(w.message)], [str(w.message) for w in warned]
    train_and_evaluate(cfg, tmp_path / "whole")
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 4)]), tmp_path / "first4")  # constant lr: the same 4 steps
    a, b, first4 = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("resumed", "whole", "first4"))
    assert resumed.steps == a.training.step == b.training.step == 8
    rows = [[{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in load_rows(tmp_path / d)]
            for d in ("resumed", "whole")]
    # The fixture's first 4 steps ran on the machine that wrote it. Another CPU can sum fp32 in
    # another order (oneDNN blocks by cache size; the fused kernels are built with -march=native),
    # so where this machine's own first 4 steps differ from the file, the resumed run can only be
    # as close as that; where they are the same, it must be the same run bit for bit.
    fixture = load_checkpoint(FIXTURE).artifact.weights
    if all(torch.equal(fixture[k], first4.artifact.weights[k]) for k in first4.artifact.weights):
        assert all(torch.equal(a.artifact.weights[k], b.artifact.weights[k]) for k in b.artifact.weights)
        assert rows[0] == rows[1][-2:]  # steps 6 and 8, the same numbers
    else:
        for k in b.artifact.weights:
            torch.testing.assert_close(a.artifact.weights[k], b.artifact.weights[k], rtol=1e-3, atol=1e-4, msg=k)
        assert [(r["step"], r["epoch"], r["lr"]) for r in rows[0]] == [(r["step"], r["epoch"], r["lr"]) for r in rows[1][-2:]]
        assert [r["train_loss"] for r in rows[0]] == pytest.approx([r["train_loss"] for r in rows[1][-2:]], rel=1e-3)


def load_rows(run: Path) -> list[MetricsRow]:
    return [MetricsRow.from_dict(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_class_names_of_other_scripts_and_spaces_load(tmp_path):
    """str.isprintable refused a no-break space, Persian's zero-width non-joiner, emoji sequences and
    characters newer than Python's Unicode tables: checkpoints of runs on such folders were refused."""
    from resnetlab.data.datasets import check_class_names
    from resnetlab.errors import breaks_lines

    names = ["a\u00a0b", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\U0001f469\u200d\U0001f52c", "\U0001face"]
    check_class_names(names, tmp_path)  # as folders: accepted
    raw = sample_checkpoint().to_dict()
    raw.update(classes=names + ["e"], num_classes=5)
    raw["model"]["fc.weight"], raw["model"]["fc.bias"] = torch.zeros(5, 64), torch.zeros(5)
    torch.save(raw, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt").artifact.classes[:4] == names
    assert [breaks_lines(n) for n in ("a\nb", "a\x1bb", "a\u2028b", "a\udcffb", "a\tb")] == [True] * 5
