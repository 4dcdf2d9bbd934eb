"""The CUDA path: data held and augmented on the GPU, AMP, channels_last, torch.compile, resume.

Skipped where there is no GPU (CI); run on a GPU machine with `python -m pytest tests/test_cuda.py`.
"""
import json
import os

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, set before its first use

from resnetlab.bench.run import run_bench  # noqa: E402
from resnetlab.bench.spec import BenchSpec, parse_variant  # noqa: E402
from resnetlab.config import DataConfig, apply_overrides  # noqa: E402
from resnetlab.data import LoaderSpec, make_eval_loader, make_train_loader, synthetic  # noqa: E402
from resnetlab.engine import load_checkpoint, model_from_checkpoint, train_and_evaluate  # noqa: E402
from resnetlab.engine.distributed import DistInfo  # noqa: E402
from resnetlab.engine.evaluate import EvalModel, evaluate_split, run_eval_spec  # noqa: E402
from resnetlab.engine.runtime import Runtime, prepare_model  # noqa: E402

from test_engine_train import tiny_config  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = [("train.device", "cuda")]


def weights(path):
    return load_checkpoint(path).artifact.weights


@pytest.fixture
def deterministic():
    """cuDNN picks nondeterministic kernels by default; equality tests need the deterministic ones."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@pytest.mark.parametrize("augment, size", [("cifar", 32), ("none", 32), ("imagenet", 64), ("rrc", 48)])
def test_batches_made_on_the_gpu_equal_those_made_on_the_cpu(augment, size):
    # The random draws come from CPU generators keyed by (seed, epoch, batch), so the device only
    # changes where the gather/crop runs, not what it picks.
    data = synthetic(96, 10, 32)
    cfg = DataConfig(dataset="synthetic", augment=augment, image_size=size, scale_min=36, scale_max=64, lighting=0.1)
    cpu = list(make_train_loader(data, cfg, LoaderSpec(32), seed=1, epoch=2))
    gpu = list(make_train_loader(data, cfg, LoaderSpec(32, device="cuda"), seed=1, epoch=2))
    assert len(cpu) == len(gpu) == 3
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and xg.dtype == torch.uint8 and torch.equal(yc, yg.cpu())
        diff = (xc.int() - xg.cpu().int()).abs().max().item()
        # crops/flips are exact; bilinear resizing may round one level differently on the GPU
        assert diff == 0 if augment in ("cifar", "none") else diff <= 1
    views_cpu = [v for vs, _ in make_eval_loader(data, cfg, LoaderSpec(40), protocol="10crop") for v in vs]
    views_gpu = [v for vs, _ in make_eval_loader(data, cfg, LoaderSpec(40, device="cuda"), protocol="10crop") for v in vs]
    assert all((a.int() - b.cpu().int()).abs().max() <= 1 for a, b in zip(views_cpu, views_gpu))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_channels_last_training_on_cuda_resumes_bit_identically(tmp_path, deterministic, precision):
    cfg = tiny_config(*CUDA, ("train.precision", precision), ("train.channels_last", "true"), ("train.compile", "false"),
                      ("schedule.kind", "step"), ("schedule.milestones", [6]), ("schedule.max_steps", 12),
                      ("train.eval_every", 4), ("optim.nesterov", True))
    train_and_evaluate(cfg, tmp_path / "a")
    train_and_evaluate(cfg, tmp_path / "b")
    train_and_evaluate(apply_overrides(cfg, [("schedule.max_steps", 5)]), tmp_path / "split")
    train_and_evaluate(cfg, tmp_path / "split", resume=True)
    a, b, split = (weights(tmp_path / d / "checkpoints" / "last.pt") for d in ("a", "b", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a), "two identical runs differ: the GPU kernels are not deterministic"
    assert all(torch.equal(a[k], split[k]) for k in a)
    assert all(v.device.type == "cpu" for v in split.values())  # checkpoints load anywhere
    if precision == "fp16":
        assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt").training.scaler["scale"] > 0


@pytest.mark.parametrize("mode", ["true", "reduce-overhead"])
def test_compiled_training_on_cuda_learns_and_saves_plain_names(tmp_path, capsys, mode):
    cfg = tiny_config(*CUDA, ("train.precision", "auto"), ("train.channels_last", "auto"), ("train.compile", mode),
                      ("schedule.max_steps", 32), ("train.eval_every", 8), ("optim.lr", 0.05))
    summary = train_and_evaluate(cfg, tmp_path)
    expected = "default" if mode == "true" else mode
    assert f"cuda:0 bf16 channels_last, torch.compile ({expected})" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_err"] < records[0]["train_err"]
    saved = weights(tmp_path / "checkpoints" / "last.pt")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in saved)
    model, *_ = model_from_checkpoint(tmp_path)  # a plain model, on the CPU
    assert summary.test["last"]["n"] == 160 and next(model.parameters()).device.type == "cpu"


def test_evaluation_on_cuda_matches_the_cpu(tmp_path):
    cfg = tiny_config(("schedule.max_steps", 16), ("optim.lr", 0.05))
    train_and_evaluate(cfg, tmp_path)
    model, normalizer, _, saved = model_from_checkpoint(tmp_path)
    data = synthetic(160, 4, 16)
    results = {}
    for device in ("cpu", "cuda"):
        rt = Runtime(torch.device(device), "fp32", device == "cuda")
        net = prepare_model(model, rt).eval()
        results[device] = evaluate_split(EvalModel(net, normalizer.to(device), rt), data, saved.data,
                                         run_eval_spec(saved, DistInfo(), rt), protocol="10crop")
    assert results["cpu"]["n"] == results["cuda"]["n"] == 160
    # TF32 convolutions may flip a near-tie; more than two images would be a real difference
    assert abs(results["cpu"]["top1"] - results["cuda"]["top1"]) <= 2 * 100 / 160


@pytest.mark.parametrize("task, variants", [("train", ["bf16-cl", "bf16-cl-reduce-overhead"]),
                                            ("infer", ["fp16-cl", "bf16-cl-default"])])
def test_bench_on_cuda_measures_throughput_memory_and_the_peak(task, variants):
    # device cuda:0, as the CLI passes it: a fresh process must start CUDA before reading its memory
    spec = BenchSpec(model="resnet20", task=task, batch_size=16, images=32, warmup=1, reps=3, device="cuda:0")
    result = run_bench(spec, [parse_variant(v) for v in variants])
    assert [r["variant"] for r in result["results"]] == ["baseline", *variants]
    assert result["machine"]["gpu"] and result["matmul_peak_macs_per_s"]["bf16"] > 1e12
    for row in result["results"]:
        assert row["per_s"] > 0 and row["peak_mem_mib"] > 0  # isolated: each variant's own CUDA peak
    if task == "infer":
        assert all(r["top1_agreement"] >= 0.5 for r in result["results"][1:])
