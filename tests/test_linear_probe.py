"""Transfer learning end to end: linear probe (frozen features, logistic regression) and fine-tuning
runs that change only what they should."""
import pytest
import torch
import torch.nn.functional as F

from resnetlab.config import Config, apply_overrides
from resnetlab.engine import evaluate_checkpoint, load_checkpoint, train_and_evaluate
from resnetlab.engine.linear_probe import error_rate, fit_logistic
from resnetlab.errors import UserError

TINY = [("model.name", "resnet8"), ("data.dataset", "synthetic"), ("data.synthetic_size", 96),
        ("data.val_size", 32), ("data.augment", "none"), ("data.image_size", 16), ("optim.batch_size", 16),
        ("schedule.kind", "constant"), ("train.precision", "fp32"), ("train.device", "cpu")]


def tiny(*overrides) -> Config:
    return apply_overrides(Config(), TINY + list(overrides))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A ResNet-8 trained 6 steps on 6 synthetic classes: the 'pretrained' weights to start from."""
    run = tmp_path_factory.mktemp("pre") / "run"
    train_and_evaluate(tiny(("data.synthetic_classes", 6), ("schedule.max_steps", 6)), run)
    return run / "checkpoints" / "last.pt"


def test_logistic_regression_reaches_its_optimum_on_raw_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 3
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 5, generator=g) + torch.tensor([10.0, -5, 0, 0, 100])  # badly scaled
    w, b = fit_logistic(x, y, 3, penalty=1e-2)
    assert error_rate(x, y, w, b) < 10.0
    # Optimality in the standardised coordinates the penalty is defined in: the gradient vanishes.
    mu, sigma = x.mean(0), x.std(0)
    ws = (w * sigma).double().requires_grad_()
    bs = (b + w @ mu).double().requires_grad_()
    z = ((x - mu) / sigma).double()
    loss = F.cross_entropy(z @ ws.T + bs, y) + 0.5e-2 * (ws * ws).sum()
    loss.backward()
    assert ws.grad.abs().max() < 1e-4 and bs.grad.abs().max() < 1e-4


def test_linear_probe_changes_only_the_classifier_and_predicts_like_any_checkpoint(pretrained, tmp_path):
    cfg = tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.linear_probe", True))
    summary = train_and_evaluate(cfg, tmp_path / "probe")
    before, after = load_checkpoint(pretrained).artifact.weights, load_checkpoint(tmp_path / "probe").artifact.weights
    backbone = [k for k in before if not k.startswith("fc.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics untouched
    assert after["fc.weight"].shape == (3, 64) and summary.penalty > 0
    report = evaluate_checkpoint(tmp_path / "probe", device="cpu", precision="fp32")
    assert report["top1"] == pytest.approx(summary.test["best"]["top1"])
    assert report["per_class"] == summary.test["best"]["per_class"]  # written like any run's
    assert (tmp_path / "probe" / "confusion_test.csv").is_file() and (tmp_path / "probe" / "metrics.csv").is_file()
    with pytest.raises(UserError, match="resume"):
        train_and_evaluate(cfg, tmp_path / "probe", resume=True)


def test_linear_probe_writes_an_artifact_without_training_state(pretrained, tmp_path):
    """Nothing trains after the fit: no optimizer in the file; resuming it as a training run says so
    in one line, and --init takes its weights like any checkpoint's."""
    from resnetlab.inference.predictor import Predictor

    cfg = tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.linear_probe", True))
    train_and_evaluate(cfg, tmp_path / "probe")
    raw = torch.load(tmp_path / "probe" / "checkpoints" / "last.pt", weights_only=True)
    assert not {"optimizer", "scaler", "rng", "step", "metrics"} & set(raw)
    ckpt = load_checkpoint(tmp_path / "probe")
    assert ckpt.training is None and ckpt.artifact.classes == ["class0", "class1", "class2"]
    assert Predictor.from_checkpoint(tmp_path / "probe", device="cpu", precision="fp32").classes == ckpt.artifact.classes
    trained = tiny(("data.synthetic_classes", 3), ("schedule.max_steps", 2))
    with pytest.raises(UserError) as err:
        train_and_evaluate(trained, tmp_path / "probe", resume=True)
    assert str(err.value) == (f"{tmp_path / 'probe' / 'checkpoints' / 'last.pt'} holds a model but no training state (a "
                              "linear probe's or converted weights); start a new run with --init "
                              f"{tmp_path / 'probe' / 'checkpoints' / 'last.pt'} to train from its weights")
    train_and_evaluate(apply_overrides(trained, [("finetune.init", str(tmp_path / "probe"))]), tmp_path / "again")
    assert load_checkpoint(tmp_path / "again").training.step == 2


def test_finetune_run_keeps_frozen_stages_bit_identical(pretrained, tmp_path):
    cfg = tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.freeze_stages", 2),
               ("finetune.backbone_lr_mult", 0.1), ("schedule.max_steps", 4), ("optim.lr", 0.1))
    train_and_evaluate(cfg, tmp_path / "ft")
    before, after = load_checkpoint(pretrained).artifact.weights, load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt").artifact.weights
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    trained = [k for k in before if k.startswith("layer3.") and k.endswith(("weight", "running_mean"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained)
    assert after["fc.weight"].shape == (3, 64)


def test_linear_probe_with_class_balanced_loss_runs(pretrained, tmp_path):
    """data.balance weights the probe's loss (its loss_weights were once out of the fit's reach: a NameError)."""
    cfg = tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.linear_probe", True),
               ("data.balance", "loss"))
    summary = train_and_evaluate(cfg, tmp_path / "probe")
    assert summary.linear_probe and summary.penalty > 0 and summary.test_top1("best") is not None
