"""resnetlab as a guest in the caller's process: its public calls leave the caller's global random
generators (torch, numpy, random) exactly as they found them."""
import random

import numpy as np
import pytest
import torch

import resnetlab
from resnetlab.bench.images import write_synthetic_jpegs
from resnetlab.bench.run import run_bench
from resnetlab.bench.spec import BenchSpec, Variant
from resnetlab.engine import evaluate_checkpoint, load_checkpoint, train_and_evaluate
from resnetlab.engine import train as train_module
from resnetlab.inference.export import export_checkpoint
from test_engine_train import tiny_config


def draws_after(call) -> tuple:
    """What the caller draws from each global generator after seeding them and making `call`."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    call()
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def assert_leaves_rngs_alone(call):
    control = draws_after(lambda: None)
    assert draws_after(call) == control


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("guest") / "run"
    train_and_evaluate(tiny_config(), out)
    return out


def test_training_leaves_the_callers_generators_as_found(tmp_path):
    runs = iter(range(10))
    assert_leaves_rngs_alone(lambda: train_and_evaluate(tiny_config(("train.seed", 7)), tmp_path / str(next(runs))))
    # and training itself still follows train.seed alone, whatever the caller's generators held
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    train_and_evaluate(tiny_config(("train.seed", 7)), tmp_path / "again")
    first, again = (load_checkpoint(tmp_path / name).artifact.weights for name in ("0", "again"))
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_or_failed_training_leaves_them_as_found(tmp_path, monkeypatch, error):
    def stop(run, stop):
        torch.rand(8), np.random.rand(8), random.random()  # seeded by the run, then drawn from
        raise error("stopped")

    monkeypatch.setattr(train_module, "train_loop", stop)

    def call():
        with pytest.raises(error):
            train_and_evaluate(tiny_config(), tmp_path / "run")
    assert_leaves_rngs_alone(call)


def test_loading_evaluating_and_exporting_leave_them_as_found(run_dir, tmp_path):
    assert_leaves_rngs_alone(lambda: resnetlab.load(run_dir, precision="fp32"))
    assert_leaves_rngs_alone(lambda: evaluate_checkpoint(run_dir, precision="fp32"))
    assert_leaves_rngs_alone(lambda: export_checkpoint(run_dir, "torchscript", tmp_path / "m.pt"))


def test_an_in_process_bench_leaves_them_as_found(tmp_path):
    write_synthetic_jpegs(tmp_path / "images", 16)
    spec = BenchSpec(model="resnet8", task="infer", batch_size=4, data=str(tmp_path / "images"), images=8, warmup=0,
                     reps=1, isolate=False)
    assert_leaves_rngs_alone(lambda: run_bench(spec, [Variant("ours", "fp32")]))
