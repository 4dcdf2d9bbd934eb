"""The training loop on synthetic data: it learns, resumes bit-identically, stops cleanly."""
import json

import pytest
import torch

from resnetlab.config import Config, apply_overrides, config_from_dict
from resnetlab.engine import TrainingDiverged, load_checkpoint, model_from_checkpoint, train_and_evaluate
from resnetlab.errors import ResnetlabWarning, UserError

TINY = [("model.name", "resnet8"), ("data.dataset", "synthetic"), ("data.synthetic_size", 160),
        ("data.synthetic_classes", 4), ("data.val_size", 32), ("data.augment", "none"), ("data.image_size", 16),
        ("optim.batch_size", 16), ("schedule.kind", "constant"), ("schedule.max_steps", 8),
        ("train.precision", "fp32"), ("train.device", "cpu"), ("train.log_every", 2)]


def tiny_config(*overrides) -> Config:
    """A ResNet-8 on 160 synthetic 16x16 images in 4 classes: a step takes milliseconds."""
    return apply_overrides(Config(), TINY + list(overrides))


def weights(path):
    return load_checkpoint(path).artifact.weights


def test_fits_synthetic_data_and_writes_the_run_directory(tmp_path):
    cfg = tiny_config(("schedule.max_steps", 32), ("train.eval_every", 8), ("optim.lr", 0.05))
    summary = train_and_evaluate(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16, 24, 32]
    assert records[-1]["train_err"] < 5.0 < records[0]["train_err"]  # learned the training set
    for key in ("epoch", "lr", "train_loss", "val_top1_err", "val_top5_err", "images_per_s", "elapsed_s"):
        assert key in records[-1]
    assert config_from_dict(load_checkpoint(tmp_path / "checkpoints" / "last.pt").artifact.config) == cfg
    assert (tmp_path / "config.yaml").is_file() and len(json.loads((tmp_path / "classes.json").read_text())) == 4
    best = min(records, key=lambda r: r["val_top1_err"])
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt").training.step == best["step"]  # first best wins ties
    assert summary.test["last"]["n"] == 160 and set(summary.test) == {"last", "best"}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary.to_dict()
    assert summary.runtime == {"device": "cpu", "precision": "fp32", "channels_last": cfg.train.channels_last != "false",
                               "compile": "none", "fused_bn": summary.runtime["fused_bn"]}  # as resolved here


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # fp16 also carries the GradScaler's state
def test_resume_is_bit_identical(tmp_path, precision):
    # lr drops at step 6 so the schedule matters; the stop at 5 is mid-epoch (8 steps per epoch).
    cfg = tiny_config(("schedule.kind", "step"), ("schedule.milestones", [6]), ("schedule.max_steps", 12),
                      ("train.eval_every", 4), ("optim.nesterov", True), ("train.precision", precision))
    train_and_evaluate(cfg, tmp_path / "one_go")
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 5)]), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt").training.step == 5
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    a, b = weights(tmp_path / "one_go" / "checkpoints" / "last.pt"), weights(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_checkpoint(tmp_path / "one_go" / "checkpoints" / "last.pt").training.optimizer["state"]
    opt_b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt").training.optimizer["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)


def test_a_resumed_run_goes_on_with_its_checkpoints_normaliser_without_fitting_one(tmp_path, monkeypatch):
    """Fitting it again decoded up to data.stats_images files at every resume, for nothing."""
    cfg = tiny_config(("data.normalize", "channel"), ("schedule.max_steps", 6), ("train.eval_every", 3))
    train_and_evaluate(cfg, tmp_path / "one_go")
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 3)]), tmp_path / "split")

    def refuse(*args, **kwargs):
        raise AssertionError("fitted a normaliser")

    monkeypatch.setattr("resnetlab.data.build.fit_normalizer", refuse)
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt").artifact for run in ("one_go", "split"))
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert all(torch.equal(torch.as_tensor(a.normalizer[k]), torch.as_tensor(b.normalizer[k])) for k in ("mean", "std"))


def test_a_fine_tune_resumes_without_its_init_and_bit_identically(tmp_path, capsys):
    """--resume read finetune.init again (then overwrote it with the checkpoint): a moved or deleted init,
    or a published name not cached offline, made the run impossible to continue."""
    train_and_evaluate(tiny_config(("schedule.max_steps", 4)), tmp_path / "source")
    init = tmp_path / "init.pt"
    (tmp_path / "source" / "checkpoints" / "last.pt").rename(init)
    cfg = tiny_config(("finetune.init", str(init)), ("schedule.max_steps", 10), ("train.eval_every", 4))
    train_and_evaluate(cfg, tmp_path / "one_go")
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 5)]), tmp_path / "split")
    init.unlink()
    capsys.readouterr()
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    assert "initialised from" not in capsys.readouterr().err  # the checkpoint, not the init, holds the weights
    a, b = weights(tmp_path / "one_go" / "checkpoints" / "last.pt"), weights(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="weights file not found"):  # a new run still needs it
        train_and_evaluate(cfg, tmp_path / "new")


def test_every_saved_rng_state_follows_from_the_seed(tmp_path):
    """numpy's and Python's global RNGs were as each process found them (OS entropy): a resumed run's
    last.pt held other states than an unbroken run's, and a second resume started from those."""
    import random

    import numpy as np

    cfg = tiny_config(("schedule.max_steps", 8), ("train.eval_every", 4))
    np.random.seed(123), random.seed(123)  # what another process would have found
    train_and_evaluate(cfg, tmp_path / "one_go")
    np.random.seed(456), random.seed(456)
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 5)]), tmp_path / "split")
    np.random.seed(789), random.seed(789)
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt").training.rng for run in ("one_go", "split"))
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"]) and a["numpy"]["pos"] == b["numpy"]["pos"]
    assert a["python"] == b["python"] and torch.equal(a["torch"], b["torch"])


def test_progressive_scales_resume_bit_identical_across_a_size_change(tmp_path):
    # 8 steps per epoch at 8 px, then 12, then the full 16; the split run stops mid-way through the
    # 12 px epoch, so the resumed session must pick the side from the epoch, not from its own start.
    cfg = tiny_config(("data.progressive_scales", [0.5, 0.75]), ("schedule.max_steps", 28), ("train.eval_every", 6),
                      ("train.test_protocol", "flip"))
    summary = train_and_evaluate(cfg, tmp_path / "one_go")
    with pytest.warns(ResnetlabWarning, match="scales lists 2 epochs and the run has 2 epochs: it never trains at data.image_size=16"):
        train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 10)]), tmp_path / "split")
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    a, b = weights(tmp_path / "one_go" / "checkpoints" / "last.pt"), weights(tmp_path / "split" / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_and_evaluate(apply_overrides(cfg, [("data.progressive_scales", [])]), tmp_path / "full_size")
    c = weights(tmp_path / "full_size" / "checkpoints" / "last.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the smaller epochs did train at their side
    assert summary.test["last"]["protocol"] == "flip" and summary.test["last"]["n"] == 160
    records = [json.loads(line) for line in (tmp_path / "one_go" / "metrics.jsonl").read_text().splitlines()]
    validated = [(r["step"], r.get("val_top1_err") is not None) for r in records]
    # validated only when every step since the last evaluation was at full size: not at 18 (steps 13-18)
    assert validated == [(6, False), (12, False), (18, False), (24, True), (28, True)]
    assert load_checkpoint(tmp_path / "one_go" / "checkpoints" / "best.pt").training.step in (24, 28)
    # evaluating once at the end: validated, as its last epoch's steps were all at full size
    train_and_evaluate(apply_overrides(cfg, [("train.eval_every", 28)]), tmp_path / "once")
    records = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("val_top1_err") is not None) for r in records] == [(28, True)]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(("schedule.max_steps", 4), ("train.eval_every", 4))
    train_and_evaluate(cfg, tmp_path)
    good = weights(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_and_evaluate(apply_overrides(cfg, [("optim.lr", 1e30), ("schedule.max_steps", 12)]), tmp_path, resume=True)
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept.training.step == 4 and all(torch.equal(good[k], kept.artifact.weights[k]) for k in good)


def test_weights_that_became_nan_are_not_validated_into_metrics(tmp_path, monkeypatch):
    """A BatchNorm statistic gone to inf while the training loss stayed finite (the batch's own statistics
    train): the validation of those weights was recorded in metrics.jsonl (an error of 87%, every logit
    NaN, shown by report as a measurement) before the checkpoint's check stopped the run."""
    from resnetlab.engine import train as engine_train

    real = engine_train.train_step

    def step_then_spoil(parts, x, y):
        out = real(parts, x, y)
        parts.net.bn1.running_var.fill_(float("inf"))
        return out

    monkeypatch.setattr(engine_train, "train_step", step_then_spoil)
    with pytest.raises(TrainingDiverged, match=r"the weights became NaN/inf by step 4; kept the last good checkpoint \(none"):
        train_and_evaluate(tiny_config(("train.eval_every", 4)), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() or (tmp_path / "metrics.jsonl").read_text() == ""


def test_an_existing_run_is_not_overwritten_and_resume_needs_one(tmp_path):
    cfg = tiny_config(("schedule.max_steps", 2))
    train_and_evaluate(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="continue it with resume=True"):
        train_and_evaluate(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="no checkpoints/last.pt"):
        train_and_evaluate(cfg, tmp_path / "empty", resume=True)


def test_bf16_channels_last_run_and_model_from_checkpoint(tmp_path):
    cfg = tiny_config(("train.precision", "bf16"), ("train.channels_last", "true"), ("schedule.max_steps", 4))
    train_and_evaluate(cfg, tmp_path)
    model, normalizer, classes, saved = model_from_checkpoint(tmp_path)
    assert saved == cfg and len(classes) == 4 and not model.training
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert model(normalizer(x)).shape == (2, 4)


def test_resnet110_style_warmup_switches_lr_once_training_error_drops(tmp_path):
    cfg = tiny_config(("schedule.kind", "step"), ("schedule.warmup_lr", 0.01), ("schedule.warmup_until_err", 50.0),
                      ("schedule.max_steps", 24), ("train.log_every", 4), ("train.eval_every", 4))
    train_and_evaluate(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    done = load_checkpoint(tmp_path / "checkpoints" / "last.pt").training.loop.schedule.warmup_done_step
    assert done is not None and 4 <= done < 24
    # lr of the last step before each evaluation: 0.01 until the step after the switch, then 0.1
    assert [r["lr"] for r in records] == [0.01 if r["step"] <= done else 0.1 for r in records]
    assert records[0]["lr"] == 0.01 and records[-1]["lr"] == 0.1


def test_stop_at_val_top1_stops_at_the_first_evaluation_that_reaches_it(tmp_path):
    cfg = tiny_config(("schedule.max_steps", 32), ("train.eval_every", 4), ("optim.lr", 0.05))
    full = train_and_evaluate(cfg, tmp_path / "full")
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    target = max(r["val_top1"] for r in records[:-1])  # reached before the end of the schedule
    first = next(r for r in records if r["val_top1"] >= target)
    summary = train_and_evaluate(apply_overrides(cfg, [("train.stop_at_val_top1", target)]), tmp_path / "stopped")
    assert full.target is None and summary.steps == first["step"] < 32
    assert summary.target == {"val_top1": target, "reached": {"step": first["step"], "val_top1": first["val_top1"],
                                                                 "elapsed_s": summary.target["reached"]["elapsed_s"]}}
    stopped = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in stopped] == [r["val_top1"] for r in records[:len(stopped)]]  # same run, cut short
    assert "last" in summary.test
    again = train_and_evaluate(apply_overrides(cfg, [("train.stop_at_val_top1", target)]), tmp_path / "stopped", resume=True)
    assert again.steps == first["step"]  # the checkpoint remembers the target was reached: no more steps


@pytest.mark.parametrize("overrides, message", [
    ([("train.stop_at_val_top1", 0.0)], r"\(0, 100\]"),
    ([("train.stop_at_val_top1", 50.0), ("data.val_size", 0)], "needs a validation split"),
])
def test_stop_at_val_top1_bad_settings_are_user_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        train_and_evaluate(tiny_config(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_a_batch_too_small_for_batchnorm_is_one_line_not_a_traceback(tmp_path):
    """One 4 px image per step leaves ResNet-8's last stage 1 x 1: PyTorch's ValueError reached the user."""
    cfg = tiny_config(("optim.batch_size", 1), ("data.image_size", 4))
    with pytest.raises(UserError, match=r"^BatchNorm cannot train on a batch of 1 image\(s\) of 4 px: a feature map of "
                                        r"the last stage holds one value per channel; raise optim.batch_size"):
        train_and_evaluate(cfg, tmp_path / "run")
