"""resnetlab in a process whose default dtype is float64 (scientific notebooks): its models, inputs
and compiled packages stay float32, predictions equal those under the float32 default, and the
caller's default dtype is left as it was."""
import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.engine import load_checkpoint, train_and_evaluate
from resnetlab.inference import compile_cache
from resnetlab.inference.fastpath import FastModel, InferencePath
from test_engine_train import tiny_config


@pytest.fixture
def float64_default():
    torch.set_default_dtype(torch.float64)
    try:
        yield
        assert torch.get_default_dtype() == torch.float64  # the caller's default, left as it was
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dtype") / "run"
    train_and_evaluate(tiny_config(), out)
    return out


def photos(n: int = 6) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def probabilities(run_dir, precision: str) -> torch.Tensor:
    predictions = resnetlab.load(run_dir, device="cpu", precision=precision).predict(photos(), topk=4)
    rows = [[s.prob for s in sorted(p.top, key=lambda s: s.index)] for p in predictions]
    return torch.tensor(rows, dtype=torch.float64)


def test_create_model_builds_float32_under_a_float64_default(float64_default):
    model = resnetlab.create_model("resnet8", num_classes=3)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_predict_under_a_float64_default_equals_float32(run_dir, precision, float64_default):
    torch.set_default_dtype(torch.float32)
    expected = probabilities(run_dir, precision)
    torch.set_default_dtype(torch.float64)
    got = probabilities(run_dir, precision)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_compiled_package_is_built_for_float32_input(monkeypatch, float64_default):
    seen = {}

    def capture(module, example, key, what, estimate_s):
        seen.update(example=example.dtype, key=key)
        return None  # no package: the model runs eagerly
    monkeypatch.setattr(compile_cache, "load_or_build", capture)
    model = resnetlab.create_model("resnet8", num_classes=3).eval()
    net = FastModel(model, "resnet8", InferencePath("fp32", True, True), 16, compile_cache.weights_digest(model))
    with torch.no_grad():
        net(torch.zeros(1, 3, 16, 16, dtype=torch.float32))
    assert seen["example"] == torch.float32
    assert seen["key"]["input_dtype"] == "torch.float32" and seen["key"]["parameter_dtypes"] == ["torch.float32"]


def test_training_under_a_float64_default_equals_training_under_float32(tmp_path, float64_default):
    torch.set_default_dtype(torch.float32)
    train_and_evaluate(tiny_config(), tmp_path / "float32")
    torch.set_default_dtype(torch.float64)
    train_and_evaluate(tiny_config(), tmp_path / "float64")
    expected, got = (load_checkpoint(tmp_path / name).artifact.weights for name in ("float32", "float64"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_evaluating_under_a_float64_default_scores_as_under_float32(run_dir, float64_default):
    from resnetlab.engine import evaluate_checkpoint

    torch.set_default_dtype(torch.float32)
    expected = evaluate_checkpoint(run_dir, precision="fp32")
    torch.set_default_dtype(torch.float64)
    assert evaluate_checkpoint(run_dir, precision="fp32") == expected
