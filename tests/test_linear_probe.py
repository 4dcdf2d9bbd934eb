"""Transfer learning end to end: linear probe (frozen features, logistic regression) and fine-tuning
runs that change only what they should; a probe's run folder resumed, refused and evaluated like a
training run's."""
import json
import os
import signal
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetlab.cli import main
from resnetlab.config import Config, apply_overrides, save_config
from resnetlab.engine import evaluate_checkpoint, load_checkpoint, train_and_evaluate
from resnetlab.engine import linear_probe
from resnetlab.engine.linear_probe import error_rate, fit_logistic
from resnetlab.errors import UserError
from resnetlab.files import storage_error

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
                              "linear probe's or converted weights); start a new run with finetune.init="
                              f"{tmp_path / 'probe' / 'checkpoints' / 'last.pt'} to train from its weights")
    from resnetlab.errors import command_line

    with command_line(), pytest.raises(UserError) as err:  # the command's words: --init PATH, with its space
        train_and_evaluate(trained, tmp_path / "probe", resume=True)
    assert str(err.value).endswith(f"start a new run with --init {tmp_path / 'probe' / 'checkpoints' / 'last.pt'} to "
                                   "train from its weights")
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


def probe(pretrained, *overrides) -> Config:
    return tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.linear_probe", True),
                *overrides)


def files_of(run) -> dict:
    """Every file of a run folder with its bytes and modification time (the lock file aside: every
    command on a run takes it, a finished training run's too)."""
    return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def same_weights(a, b) -> bool:
    wa, wb = load_checkpoint(a).artifact.weights, load_checkpoint(b).artifact.weights
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_finished_linear_probe_is_not_resumed_again_and_nothing_is_rewritten(pretrained, tmp_path, capsys):
    """Running it again said 'continue with --resume', and --resume said 'start it again': a loop. As
    for a finished training run: --resume and --resume-if-exists say it is finished, exit 0, write nothing."""
    run = tmp_path / "probe"
    first = train_and_evaluate(probe(pretrained), run)
    before = files_of(run)
    capsys.readouterr()
    with pytest.raises(UserError, match="continue it with resume=True or choose another workdir"):
        train_and_evaluate(probe(pretrained), run)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert err == f"{run} finished: nothing to resume (a linear probe is fitted once; to fit another, choose another --out)\n"
    save_config(probe(pretrained), tmp_path / "same.yaml")  # the command that made it, rerun by a scheduler
    assert main(["train", "--recipe", str(tmp_path / "same.yaml"), "--out", str(run), "--resume-if-exists"]) == 0
    out = capsys.readouterr()
    assert "finished: nothing to resume" in out.err and json.loads(out.out)["test"] == first.to_dict()["test"]
    assert files_of(run) == before


def test_an_interrupted_linear_probe_resumes_to_the_same_fit(pretrained, tmp_path, monkeypatch):
    """Ctrl-C during the fit, then --resume: the probe is fitted again from the start, bit for bit the
    uninterrupted run's; stopped after its checkpoints but before summary.json, likewise."""
    train_and_evaluate(probe(pretrained), tmp_path / "whole")
    run = tmp_path / "probe"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(linear_probe, "fit_logistic", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(probe(pretrained), run)
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    assert main(["train", "--resume", str(run)]) == 0
    assert same_weights(run, tmp_path / "whole")
    (run / "summary.json").unlink()
    (run / "checkpoints" / "best.pt").unlink()
    resumed = train_and_evaluate(probe(pretrained), run, resume=True)
    assert same_weights(run / "checkpoints" / "best.pt", tmp_path / "whole") and resumed.penalty > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_a_linear_probe_in_one_line_and_it_resumes(pretrained, tmp_path, monkeypatch, capsys,
                                                                           signum):
    """SIGTERM killed a probe with no word (the default action) and Ctrl-C was a bare 'interrupted'."""
    save_config(probe(pretrained), tmp_path / "probe.yaml")
    run, fit = tmp_path / "probe", linear_probe.fit_logistic

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return fit(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(linear_probe, "fit_logistic", signalled)
        assert main(["train", "--recipe", str(tmp_path / "probe.yaml"), "--out", str(run)]) == 128 + signum
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"resnetlab train: stopped by {signal.Signals(signum).name} at step 0; no checkpoint yet, so nothing was lost. "
        f"Continue with: resnetlab train --resume {run}")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and not (run / "summary.json").exists()
    assert main(["train", "--resume", str(run)]) == 0 and (run / "summary.json").is_file()


def test_a_training_run_is_not_resumed_as_a_linear_probe(pretrained, tmp_path):
    """--resume RUN --set finetune.linear_probe=true would fit a probe over the run's checkpoints."""
    run = tmp_path / "trained"
    shutil.copytree(pretrained.parent.parent, run)
    before = files_of(run)
    with pytest.raises(UserError, match=f"{run} holds a training run, not a linear probe"):
        train_and_evaluate(probe(pretrained, ("data.synthetic_classes", 6)), run, resume=True)  # its own data
    assert files_of(run) == before


def write_folder(root, counts=(("train", 6), ("test", 2))):
    rng = np.random.default_rng(0)
    for split, n in counts:
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (rng.random((16, 16, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")


def test_a_linear_probe_writes_data_json_and_evaluates_like_a_training_run(pretrained, tmp_path, capsys):
    """data.json (what the data was, what was held out) is what eval --split val and --resume go by."""
    from resnetlab.data import build_data
    from resnetlab.data.summary import data_record

    data, run = tmp_path / "data", tmp_path / "probe"
    write_folder(data)
    cfg = probe(pretrained, ("data.dataset", "folder"), ("data.root", str(data)), ("data.val_size", 6))
    train_and_evaluate(cfg, run)
    record = json.loads((run / "data.json").read_text())
    assert record == json.loads(json.dumps(data_record(build_data(cfg.data, seed=cfg.train.seed))))
    assert record["validation"]["images"] == 6 and len(record["validation"]["files"]) == 6
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--json"]) == 0
    val_top1 = json.loads((run / "metrics.jsonl").read_text())["val_top1"]
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(val_top1)
    write_folder(data, (("train", 7),))  # one more training image per class: the data is not the run's
    (run / "summary.json").unlink()  # an unfinished probe, resumed
    with pytest.raises(UserError, match="is not what the run trained on"):
        train_and_evaluate(cfg, run, resume=True)


@pytest.mark.parametrize("what, override, words", [
    ("unknown model", ("model.name", "resnet9"), "unknown model 'resnet9'"),
    ("not weights", ("finetune.init", "GARBAGE"), "is not a PyTorch or safetensors weights file"),
    ("NaN weights", ("finetune.init", "NAN"), "holds NaN or infinite values (conv1.weight"),
])
def test_a_refused_linear_probe_leaves_no_folder(pretrained, tmp_path, what, override, words):
    """Refused before anything is written, as a training run is: no half-made folder to trip over."""
    (tmp_path / "garbage.pt").write_bytes(b"not a weights file")
    weights = load_checkpoint(pretrained).artifact.weights
    torch.save({**weights, "conv1.weight": torch.full_like(weights["conv1.weight"], float("nan"))}, tmp_path / "nan.pt")
    key, value = override
    value = {"GARBAGE": str(tmp_path / "garbage.pt"), "NAN": str(tmp_path / "nan.pt")}.get(value, value)
    with pytest.raises(UserError) as err:
        train_and_evaluate(probe(pretrained, (key, value)), tmp_path / "probe")
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "probe").exists()


def test_a_full_disk_during_the_probe_says_what_to_do(pretrained, tmp_path, monkeypatch):
    def full(ckpt, path):
        raise storage_error(path, "No space left on device", existed=False)

    monkeypatch.setattr(linear_probe, "save_checkpoint", full)
    with pytest.raises(UserError, match="No space left on device.*Free some space, then start the run again$"):
        train_and_evaluate(probe(pretrained), tmp_path / "probe")


@pytest.mark.parametrize("probe", [False, True])
def test_a_run_from_weights_normalises_as_they_were_trained(pretrained, tmp_path, probe):
    """The init's normaliser was dropped: the recipe's was fitted on the new data (or ImageNet's given), so the
    features saw other inputs than they learnt on (a ResNet-20 of a pixel mean: 83.7% -> 41.3% on its own images)."""
    own = load_checkpoint(pretrained).artifact.normalizer
    for keep in (True, False):
        cfg = tiny(("data.synthetic_classes", 3), ("data.synthetic_size", 64), ("finetune.init", str(pretrained)),
                   ("finetune.linear_probe", probe), ("schedule.max_steps", 1), ("finetune.init_normalizer", keep))
        train_and_evaluate(cfg, tmp_path / f"run-{keep}")
        got = load_checkpoint(tmp_path / f"run-{keep}").artifact.normalizer
        assert torch.equal(got["mean"], own["mean"]) == keep and got["kind"] == own["kind"]


def test_the_normaliser_of_weights_is_read_from_their_source(pretrained, tmp_path):
    from resnetlab.config import FinetuneConfig
    from resnetlab.engine.init_normalizer import init_normalizer
    from resnetlab.inference.export import export_checkpoint

    published, said = init_normalizer(FinetuneConfig(init="resnet18.tv_in1k"))  # nothing is downloaded for it
    assert published.kind == "imagenet" and "resnet18.tv_in1k" in said
    export_checkpoint(pretrained, "safetensors", tmp_path / "w.safetensors")
    exported, _ = init_normalizer(FinetuneConfig(init=str(tmp_path / "w.safetensors")))
    assert torch.equal(exported.mean, load_checkpoint(pretrained).artifact.normalizer["mean"].float())
    torch.save(load_checkpoint(pretrained).artifact.weights, tmp_path / "plain.pth")
    assert init_normalizer(FinetuneConfig(init=str(tmp_path / "plain.pth"))) is None  # records none: data.normalize
    assert init_normalizer(FinetuneConfig(init=str(pretrained), init_normalizer=False)) is None


def test_a_probe_tests_with_the_run_s_protocol_so_eval_reproduces_its_summary(pretrained, tmp_path):
    """The probe's final test was always the centre view, `eval RUN` the run's train.test_protocol: 80.0 against
    81.67 for a cifar10_fast probe (flip views)."""
    cfg = tiny(("data.synthetic_classes", 3), ("finetune.init", str(pretrained)), ("finetune.linear_probe", True),
               ("train.test_protocol", "flip"))
    best = train_and_evaluate(cfg, tmp_path / "probe").test["best"]
    report = evaluate_checkpoint(tmp_path / "probe", device="cpu", precision="fp32")
    assert best["protocol"] == report["protocol"] == "flip"
    assert (report["top1"], report["per_class"]) == (pytest.approx(best["top1"]), best["per_class"])


def test_a_penalty_at_the_edge_of_the_grid_is_said():
    """The largest penalty won 3 of 4 probes with the validation error still falling, and nothing said so."""
    from resnetlab.engine.linear_probe import PENALTIES, edge_note

    falling = {p: 50.0 - i for i, p in enumerate(PENALTIES)}
    assert edge_note(falling) == ("the linear probe's L2 penalty is the largest tried (0.1: validation error 46.00% "
                                  "against 47.00% at 0.01), so one past it might do better; the fit is kept, and "
                                  "metrics.jsonl lists the validation error of each penalty")
    assert "smallest tried (1e-05" in edge_note({p: 40.0 + i for i, p in enumerate(PENALTIES)})
    assert edge_note({**falling, 1e-3: 10.0}) is None and edge_note({}) is None
    assert edge_note({p: 30.0 for p in PENALTIES}) is None  # ties: no sign of a slope
    ends = {**{p: 45.0 for p in PENALTIES}, PENALTIES[0]: 40.0, PENALTIES[-1]: 40.0}  # a tie: the smaller is chosen
    assert "smallest tried" in edge_note(ends) and edge_note({0.1: 3.0}) is None
