"""Top-1/top-5 counting and the multi-view (10-crop, multi-scale) softmax average."""
import pytest
import torch
from torch import nn

from resnetlab.engine.evaluate import accuracy_report, count_correct, evaluate
from resnetlab.engine.runtime import Runtime

RT = Runtime.resolve(device="cpu", precision="fp32", channels_last="false")


def test_top1_and_top5_counts():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0],   # label 3: top-1 hit
                          [0.3, 0.2, 0.1, 0.05, 0.15, 0.12, 0.08],  # label 3: rank 6 -> miss in top-5
                          [0.3, 0.2, 0.1, 0.05, 0.15, 0.12, 0.08]])  # label 1: rank 2 -> top-5 hit only
    assert count_correct(probs, torch.tensor([3, 3, 1])).tolist() == [1, 2, 3]
    two_classes = torch.tensor([[0.7, 0.3], [0.4, 0.6]])  # top-5 of 2 classes is top-2: always right
    assert count_correct(two_classes, torch.tensor([1, 1])).tolist() == [1, 2, 2]


class ViewModel(nn.Module):
    """Logits read from the first pixel: view A says class 0 weakly, view B says class 1 strongly."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 1, 0, 0]], dim=1)


def test_views_are_combined_by_averaging_softmax():
    a = torch.zeros(1, 3, 2, 2)
    a[:, 0, 0, 0] = 1.0  # softmax(1, 0): class 0 at 0.73
    b = torch.zeros(1, 3, 2, 2)
    b[:, 1, 0, 0] = 5.0  # softmax(0, 5): class 1 at 0.99
    loader = [([a, a, b], torch.tensor([1]))]  # two weak votes for 0, one strong for 1: mean says 1
    report = evaluate(ViewModel(), nn.Identity(), loader, RT, protocol="10crop")
    assert (report["top1"], report["n"], report["protocol"]) == (100.0, 1, "10crop")
    assert evaluate(ViewModel(), nn.Identity(), [([a], torch.tensor([1]))], RT)["top1"] == 0.0


def test_report_keys_and_errors():
    r = accuracy_report(75, 90, 100, "center")
    assert r == {"top1": 75.0, "top5": 90.0, "top1_err": 25.0, "top5_err": pytest.approx(10.0), "n": 100,
                 "protocol": "center"}


def test_eval_data_of_a_synthetic_run_scores_that_folder(tmp_path):
    """`eval RUN --data DIR` of a run trained on synthetic data printed the synthetic set's numbers."""
    import os

    from PIL import Image
    from test_engine_train import tiny_config

    from resnetlab.engine import evaluate_checkpoint, train_and_evaluate

    train_and_evaluate(tiny_config(("schedule.max_steps", 2)), tmp_path / "run", stream=open(os.devnull, "w"))
    own = evaluate_checkpoint(tmp_path / "run", precision="fp32")
    for name, n in (("class0", 3), ("class2", 2)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / "photos" / name / f"{i}.png")
    report = evaluate_checkpoint(tmp_path / "run", str(tmp_path / "photos"), precision="fp32")
    assert report["n"] == 5 and own["n"] != 5


def test_eval_of_a_run_scores_as_its_own_final_test_did(tmp_path):
    """The run tested with its fused batch-norm kernels (bf16 channels_last on a CPU that has them) and
    `eval RUN` with the plain modules: other rounding, and per-class numbers that did not match
    summary.json's (seed 1 here: one image). eval now takes the run's batch-norm kernels too."""
    from test_engine_train import tiny_config

    from resnetlab.engine import evaluate_checkpoint, train_and_evaluate

    cfg = tiny_config(("train.precision", "bf16"), ("train.channels_last", "true"), ("schedule.max_steps", 16),
                      ("train.eval_every", 8), ("train.seed", 1), ("model.name", "resnet20"),
                      ("data.synthetic_size", 320))
    best = train_and_evaluate(cfg, tmp_path).test["best"]
    report = evaluate_checkpoint(tmp_path, device="cpu")
    assert (report["top1"], report["top5"], report["per_class"]) == (best["top1"], best["top5"], best["per_class"])


def test_eval_of_a_fused_bn_true_run_in_another_precision_takes_the_plain_modules(tmp_path):
    """The run's train.fused_bn=true, passed on as it was, refused fp16 (the kernels take fp32 and bf16)."""
    from test_engine_train import tiny_config

    from resnetlab.engine import evaluate_checkpoint, train_and_evaluate

    train_and_evaluate(tiny_config(("train.fused_bn", "true"), ("schedule.max_steps", 2)), tmp_path)
    assert evaluate_checkpoint(tmp_path, device="cpu", precision="fp16")["n"] == 160


def test_eval_of_a_run_takes_its_test_protocol_on_test_and_the_centre_view_on_val(tmp_path):
    """`eval RUN` scored the centre view whatever the run tested with: a cifar10_fast run (flip views)
    printed another figure than its summary.json. The test split takes the run's train.test_protocol,
    val the centre view its validations used; an explicit --protocol wins."""
    from test_engine_train import tiny_config

    from resnetlab.engine import evaluate_checkpoint, train_and_evaluate

    cfg = tiny_config(("train.test_protocol", "flip"), ("schedule.max_steps", 4), ("train.eval_every", 2))
    best = train_and_evaluate(cfg, tmp_path).test["best"]
    report = evaluate_checkpoint(tmp_path, device="cpu", precision="fp32")
    assert report["protocol"] == "flip"
    assert (report["top1"], report["top5"], report["per_class"]) == (best["top1"], best["top5"], best["per_class"])
    assert evaluate_checkpoint(tmp_path, split="val", device="cpu", precision="fp32")["protocol"] == "center"
    assert evaluate_checkpoint(tmp_path, protocol="center", device="cpu", precision="fp32")["protocol"] == "center"
