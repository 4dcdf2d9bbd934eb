"""The benchmark harness: its baseline pipeline, statistics, memory probe and reports (no timings asserted)."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.bench.baseline import PAD, PILFolderDataset, baseline_loader, baseline_workers
from resnetlab.bench.images import bench_images, write_synthetic_jpegs
from resnetlab.bench.loop import LoopSpec, measure_loop_overhead
from resnetlab.bench.machine import cpu_model_and_flags, matmul_peak, peak_size
from resnetlab.bench.measure import PeakMemory
from resnetlab.bench.run import run_bench
from resnetlab.bench.spec import BASELINE, BenchSpec, Variant, parse_variant
from resnetlab.bench.timing import interleaved, stats
from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.models import create_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_synthetic_jpegs(root, 48)
    assert len(list((root / "train").iterdir())) == 10  # every class present
    return root


def reference(path):
    """ToTensor + Normalize of the decoded file, computed independently of the pipeline."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    return (arr - np.array(MEAN)) / np.array(STD)  # (H, W, 3)


def test_baseline_eval_item_is_totensor_then_normalize(folder):
    images = bench_images(str(folder), 5)
    ds = PILFolderDataset(images.paths, images.labels.tolist(), 32, MEAN, STD, train=False)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(images.labels[3])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), reference(images.paths[3]), atol=1e-5)


def test_baseline_train_item_is_a_padded_crop_maybe_flipped(folder):
    images = bench_images(str(folder), 5)
    ds = PILFolderDataset(images.paths, images.labels.tolist(), 32, MEAN, STD, train=True, seed=1)
    ref = np.empty((32 + 2 * PAD, 32 + 2 * PAD, 3))
    ref[:] = -np.array(MEAN) / np.array(STD)  # the padding: black pixels, normalised
    ref[PAD:-PAD, PAD:-PAD] = reference(images.paths[0])
    for _ in range(4):
        x = ds[0][0].permute(1, 2, 0).numpy()
        windows = [w for t in range(2 * PAD + 1) for l in range(2 * PAD + 1)
                   for w in (ref[t:t + 32, l:l + 32], ref[t:t + 32, l:l + 32][:, ::-1])]
        assert min(np.abs(x - w).max() for w in windows) < 1e-5


def test_baseline_loader_collates_whole_batches(folder):
    images = bench_images(str(folder), 10)
    loader = baseline_loader(PILFolderDataset(images.paths, images.labels.tolist(), 32, MEAN, STD), batch_size=4)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 32, 32) and batches[0][1].dtype == torch.int64


class _Draws(torch.utils.data.Dataset):
    """Item i = the next draw of the dataset's random.Random, as the baseline's crops use it."""

    def __init__(self):
        self.rng = random.Random(0)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.rng.random()


def test_baseline_workers_draw_different_augmentations():
    # Each worker process holds a copy of the dataset's generator; unseeded, worker 0 and worker 1
    # would return the same "random" crop for their first images.
    loader = baseline_loader(_Draws(), batch_size=1, workers=2)
    draws = [float(b) for b in loader]
    assert len(draws) == 4 and len(set(draws)) == 4
    assert baseline_workers(torch.device("cpu")) == 0 and baseline_workers(torch.device("cuda")) >= 1


def test_bench_images_is_a_seeded_subset_and_checks_its_input(folder, tmp_path):
    a, b = bench_images(str(folder), 8, seed=0), bench_images(str(folder), 8, seed=0)
    assert a.paths == b.paths and len(set(a.paths)) == 8 and a.paths != bench_images(str(folder), 8, seed=1).paths
    with pytest.raises(UserError, match="fewer than --images 49"):
        bench_images(str(folder), 49)
    with pytest.raises(UserError, match="no train/ folder"):
        bench_images(str(tmp_path), 4)


def test_interleaved_warms_every_function_up_then_calls_them_in_turn():
    """The one timer of every benchmark: round-robin order, one time per call (no durations asserted)."""
    calls, starts = [], {}
    seconds = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, reps=3,
                          starts=starts)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # every other round reversed
    assert {name: len(s) for name, s in seconds.items()} == {"a": 3, "b": 3}
    assert starts["a"][0] < starts["b"][0] < starts["b"][1] < starts["a"][1] < starts["a"][2] < starts["b"][2]
    calls.clear()
    interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=0, reps=1, settle=1)
    assert calls == ["a", "a", "b", "b"]  # each timed call right after an untimed one of the same function


def test_stats_median_and_spread():
    s = stats([4.0, 1.0, 2.0, 3.0], items=8)
    assert (s["median_s"], s["min_s"], s["max_s"], s["reps"]) == (2.5, 1.0, 4.0, 4)
    assert s["per_s"] == 8 / 2.5 and s["per_s_min"] == 2.0 and s["per_s_max"] == 8.0
    assert stats([3.0, 1.0, 2.0], 1)["median_s"] == 2.0


def test_parse_variant_round_trips_labels_and_refuses_nonsense():
    for label in ("fp32", "bf16-cl", "fp16-cl-default", "bf16-max-autotune-no-cudagraphs", "baseline"):
        assert parse_variant(label).label == label
    assert parse_variant("bf16-cl-default") == Variant("ours", "bf16", True, "default")
    for bad in ("fp64", "bf16-cl-fast", "bf16-nhwc"):
        with pytest.raises(UserError, match="variant"):
            parse_variant(bad)
    assert parse_variant("bf16-cl-reduce-overhead") == Variant("ours", "bf16", True, "reduce-overhead")
    assert parse_variant("bf16-cl-fused") == Variant("ours", "bf16", True, fused=True)
    assert parse_variant("fp32-fused").label == "fp32-fused"
    for bad in ("bf16-cl-default-fused", "baseline-fused", "int8-fused"):  # compile fuses by itself; no BN to train
        with pytest.raises(UserError, match="-fused goes after"):
            parse_variant(bad)


def test_the_fused_batch_norm_is_a_training_variant(folder):
    with pytest.raises(UserError, match="fused batch-norm is for training"):
        run_bench(BenchSpec(task="infer", data=str(folder), images=8, batch_size=4), [parse_variant("fp32-cl-fused")])


def test_cuda_graph_variants_need_a_gpu(folder):
    with pytest.raises(UserError, match="reduce-overhead.*--device cuda"):
        run_bench(BenchSpec(data=str(folder), images=8, batch_size=4), [parse_variant("bf16-cl-reduce-overhead")])


def test_peak_memory_sees_torch_allocations():
    with PeakMemory(torch.device("cpu")) as mem:
        big = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
        del big
    assert mem.mib >= 200


def test_matmul_peak_and_machine_description():
    assert matmul_peak("fp32", n=256, reps=1) > 0
    with pytest.raises(ValueError, match="precision"):
        matmul_peak("fp8")
    model, flags = cpu_model_and_flags()
    assert isinstance(model, str) and set(flags) <= {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                                                     "avx_vnni", "amx_bf16", "amx_fp16", "amx_int8", "amx_tile"}


@pytest.mark.parametrize("probe_s, size", [(0.0005, 2048), (0.0019, 2048), (0.003, 1024), (0.11, 512), (5.0, 256)])
def test_matmul_peak_shrinks_the_matmul_for_an_emulated_dtype(probe_s, size):
    # a 256^3 probe taking probe_s predicts probe_s * 8^3 at 2048: fp32 here (~0.3 ms) keeps 2048,
    # emulated bf16 on AVX2 (~0.11 s, a minute per 2048^3 call) drops to 512
    assert peak_size(probe_s, 256, 2048, max_call_s=1.0) == size
    assert peak_size(5.0, 256, 1000, max_call_s=1.0) == 256  # never below the probe


def test_inference_bench_reports_agreement_against_the_baseline(folder):
    spec = BenchSpec(model="resnet20", task="infer", batch_size=4, data=str(folder), images=12, warmup=0, reps=1,
                     isolate=False)
    result = run_bench(spec, [Variant("ours", "fp32"), Variant("ours", "bf16", True), Variant("ours", "int8")])
    base, fp32, bf16, int8 = result["results"]
    assert [r["variant"] for r in result["results"]] == ["baseline", "fp32", "bf16-cl", "int8"]
    assert base["speedup"] == 1.0 and base["top1_agreement"] == 1.0
    # Same weights, same files, fp32 both: only the pipelines differ, and they compute the same input.
    assert fp32["top1_agreement"] == 1.0
    assert 0 <= bf16["top1_agreement"] <= 1 and bf16["latency_b1_ms"] > 0
    assert 0 <= int8["top1_agreement"] <= 1 and int8["peak_fraction"] > 0
    assert set(result["matmul_peak_macs_per_s"]) == {"fp32", "bf16", "int8"}
    assert result["forward_macs_per_image"] == 40_551_040  # ResNet-20 at 32 px with a 10-class fc
    json.dumps(result)


def test_train_bench_measures_every_variant(folder):
    spec = BenchSpec(model="resnet20", task="train", batch_size=4, data=str(folder), images=8, warmup=0, reps=2,
                     isolate=False)
    result = run_bench(spec, [BASELINE, Variant("ours", "bf16", True), Variant("ours", "bf16", True, fused=True)])
    assert [r["variant"] for r in result["results"]] == ["baseline", "bf16-cl", "bf16-cl-fused"]  # the baseline once, first
    assert [r["fused"] for r in result["results"]] == [False, False, True]
    for row in result["results"]:
        assert row["reps"] == 2 and row["per_s"] == pytest.approx(4 / row["median_s"])
        assert row["macs_per_s"] == pytest.approx(3 * result["forward_macs_per_image"] * row["per_s"])


def test_bench_rejects_bad_specs(folder):
    with pytest.raises(UserError, match="unknown model|resnet"):
        run_bench(BenchSpec(model="resnet9000", data=str(folder)), [])
    with pytest.raises(UserError, match="--reps"):
        run_bench(BenchSpec(reps=0, data=str(folder)), [])
    with pytest.raises(UserError, match="fewer than one batch"):
        run_bench(BenchSpec(task="infer", batch_size=16, images=8, data=str(folder), isolate=False, reps=1), [])


def test_loop_overhead_runs_the_real_loop():
    result = measure_loop_overhead(LoopSpec("resnet20", batch_size=8, steps_per_epoch=2, size=16, warmup=0, reps=2))
    assert result["runs_steps"] == [2, 6] and result["runs_s"][0] > 0 and result["bare_step"]["reps"] == 2
    with pytest.raises(UserError, match="epochs"):
        measure_loop_overhead(LoopSpec("resnet20", 8, 2, 16, epochs=(2, 2)))


def test_cli_writes_json_and_reports_bad_input(folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--task", "infer", "--data", str(folder), "--images", "8", "--batch-size", "4",
                 "--reps", "1", "--warmup", "0", "--precision", "fp32", "--channels-last", "true", "--no-isolate",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["baseline", "fp32-cl"]
    assert [r["peak_mem_mib"] for r in rows] == [None, None]  # variants shared a process: no per-variant peak
    assert "baseline" in capsys.readouterr().out
    assert main(["bench", "--variant", "bf17", "--data", str(folder)]) == 2
    assert "variant 'bf17'" in capsys.readouterr().err


def test_a_json_path_that_cannot_be_written_fails_before_the_benchmark(tmp_path, capsys, monkeypatch):
    import resnetlab.bench.run as bench_run

    monkeypatch.setattr(bench_run, "run_bench", lambda *a: pytest.fail("benchmarked before checking --json"))
    assert main(["bench", "--task", "infer", "--no-isolate", "--json", "/proc/b.json"]) == 2
    assert capsys.readouterr().err == ("resnetlab bench: error: could not write /proc/b.json (No such file or "
                                       "directory); nothing was written there\n")


def test_weights_take_a_run_directory_and_only_for_inference(tmp_path, capsys, monkeypatch):
    import resnetlab.bench.run as bench_run

    seen = []
    monkeypatch.setattr(bench_run, "run_bench", lambda spec, variants: seen.append(spec.weights) or {})
    monkeypatch.setattr(bench_run, "format_table", lambda result: "")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["bench", "--task", "train", "--weights", str(tmp_path / "run")]) == 2  # it was taken and unused
    assert capsys.readouterr().err == ("resnetlab bench: error: --weights is for --task infer (its top-1 agreement "
                                       "check); --task train times seeded weights\n")
    assert main(["bench", "--task", "infer", "--no-isolate", "--weights", str(tmp_path / "run")]) == 0
    assert seen == [str(tmp_path / "run" / "checkpoints" / "last.pt")]  # was "a folder, not a weights file"


@pytest.mark.parametrize("size", ["0", "-5"])
def test_image_size_below_one_is_refused_in_one_line_not_benchmarked(size, capsys, monkeypatch):
    import resnetlab.bench.run as bench_run

    # 0 used to be taken as the default size, -5 to fail deep in the decoder
    monkeypatch.setattr(bench_run, "run_bench", lambda *a: pytest.fail(f"benchmarked with --image-size {size}"))
    with pytest.raises(SystemExit) as code:
        main(["bench", "--task", "infer", "--no-isolate", "--image-size", size])
    err = capsys.readouterr().err
    assert code.value.code == 2 and f"argument --image-size: must be at least 1, got {size}" in err
    assert err.count("\n") == 1


def test_isolated_variant_runs_in_its_own_process_and_reports_memory(folder):
    spec = BenchSpec(model="resnet20", task="infer", batch_size=4, data=str(folder), images=8, warmup=0, reps=1)
    (row,) = run_bench(spec, [])["results"]
    assert row["variant"] == "baseline" and row["peak_mem_mib"] >= 0 and row["top1_agreement"] == 1.0


def test_isolated_variants_are_timed_round_robin_and_paired_by_round(folder):
    spec = BenchSpec(model="resnet20", task="train", batch_size=4, data=str(folder), images=8, warmup=1, reps=3)
    result = run_bench(spec, [Variant("ours", "fp32", True)])
    base, ours = result["results"]
    assert result["timing"] == "round-robin" and ours["variant"] == "fp32-cl"
    assert base["peak_mem_mib"] > 0 and ours["peak_mem_mib"] > 0  # each its own process
    assert len(base["seconds"]) == len(ours["seconds"]) == 3 and ours["median_s"] == sorted(ours["seconds"])[1]
    b, o = base["started_s"], ours["started_s"]
    assert b[0] == 0 and b[0] < o[0] < o[1] < b[1] < b[2] < o[2]  # round-robin, every other round reversed
    ratios = sorted(b / o for b, o in zip(base["seconds"], ours["seconds"]))
    assert ours["speedup_per_round"] == pytest.approx(ratios)  # min, median, max of 3 rounds
    assert base["speedup_per_round"] == [1.0, 1.0, 1.0]


def test_an_isolated_variants_error_reaches_the_caller_as_it_was(folder):
    spec = BenchSpec(model="resnet20", task="infer", batch_size=16, images=8, data=str(folder), reps=1)
    with pytest.raises(UserError, match="fewer than one batch"):
        run_bench(spec, [])


def test_an_error_that_cannot_travel_between_processes_sends_its_text():
    from resnetlab.bench.processes import portable

    class NeedsTwo(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    assert portable(NeedsTwo(1, 2)) is None  # pickled, it could not be unpickled in the parent
    error = UserError("--images 8 is fewer than one batch (16)")
    assert portable(error) is error

    class UserNeedsTwo(UserError):  # as models.identify.OtherNetwork: bench --weights of another network
        def __init__(self, a, b):   # showed the measuring process's 30-line traceback
            super().__init__(f"weights of {a}, not {b}")

    sent = portable(UserNeedsTwo("resnet20", "resnet56"))
    assert type(sent) is UserError and str(sent) == "weights of resnet20, not resnet56"


def test_no_variant_process_starts_without_the_memory_for_its_peak(monkeypatch):
    from types import SimpleNamespace

    from resnetlab.bench import processes

    running = [SimpleNamespace(peak_rss=3 * 2**30), SimpleNamespace(peak_rss=4 * 2**30)]
    monkeypatch.setattr(processes, "available_memory", lambda: int(4.5 * 2**30))
    with pytest.raises(UserError, match=r"bf16-cl in a process of its own: 4.5 GiB available, ~4.8 GiB needed with 2 .*--no-isolate"):
        processes.check_memory_for_another(running, Variant("ours", "bf16", True))
    processes.check_memory_for_another(running[:1], Variant("ours", "bf16", True))  # 3.6 GiB: fits
    processes.check_memory_for_another([], Variant("ours", "bf16", True))  # the first always starts
    monkeypatch.setattr(processes, "available_memory", lambda: None)  # not Linux: no figure, no check
    processes.check_memory_for_another(running, Variant("ours", "bf16", True))


@pytest.mark.parametrize("version", [1, 2])
def test_a_containers_memory_limit_counts_as_what_is_available(tmp_path, version):
    from resnetlab.bench.processes import cgroup_headroom

    folder, names = ((tmp_path / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
                     if version == 1 else (tmp_path, ("memory.max", "memory.current", "inactive_file")))
    folder.mkdir(exist_ok=True)
    (folder / names[0]).write_text(f"{8 * 2**30}\n")
    (folder / names[1]).write_text(f"{6 * 2**30}\n")
    (folder / "memory.stat").write_text(f"anon 1\n{names[2]} {2**30}\nfile 5\n")
    assert cgroup_headroom(tmp_path) == 3 * 2**30  # 8 - 6 used, of which 1 droppable page cache
    (folder / names[0]).write_text("max\n" if version == 2 else "9223372036854771712\n")
    assert cgroup_headroom(tmp_path) is None  # no limit
    assert cgroup_headroom(tmp_path / "nowhere") is None


def test_a_variant_process_that_dies_gives_one_clear_error(folder, tmp_path):
    import multiprocessing

    from resnetlab.bench.processes import VariantProcess

    spec = BenchSpec(model="resnet20", task="infer", batch_size=4, images=8, data=str(folder), reps=1,
                     cache_dir=str(tmp_path))
    process = VariantProcess(multiprocessing.get_context("spawn"), spec, bench_images(str(folder), 8), BASELINE)
    try:
        seconds, started = process.request("time", "main")
        assert seconds > 0 and started > 0
        process.process.kill()
        process.process.join()
        with pytest.raises(UserError, match="measuring baseline ended without a result"):
            process.request("time", "main")
    finally:
        process.close()


def test_auto_defaults_are_the_measured_fast_path(monkeypatch):
    """benchmarks/README.md: without AMX, bf16 is slower than fp32; channels_last wins everywhere."""
    from resnetlab.engine import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_channels_last("auto") is True
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.resolve_channels_last("false") is False


def test_trained_checkpoints_are_fed_their_own_normaliser(tmp_path):
    from resnetlab.bench.measure import trained_normalizer
    from resnetlab.data import Normalizer
    from resnetlab.engine.checkpoint import FORMAT

    own = Normalizer("channel", torch.tensor([10.0, 20.0, 30.0]), torch.tensor([2.0, 3.0, 4.0]))
    torch.save({"format": FORMAT, "model": create_model("resnet8", num_classes=2).state_dict(), "model_name": "resnet8",
                "model_kwargs": {}, "num_classes": 2, "classes": ["a", "b"], "normalizer": own.state(), "config": None},
               tmp_path / "ckpt.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    found = trained_normalizer(str(tmp_path / "ckpt.pt"))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert found is not None and torch.equal(found(x), own(x))
    assert trained_normalizer(str(tmp_path / "plain.pt")) is None  # plain weights: fit on the images
    assert trained_normalizer(str(tmp_path / "missing.pt")) is None and trained_normalizer(None) is None


def test_bench_says_an_emulated_precision_is_emulated_and_does_not_claim_fused_fp16(capsys, monkeypatch):
    """bench skipped the warning train/predict give (and its peak% read 2347% against the emulated
    fp16 matmul peak), and labelled fp16 training 'fused' though the kernels take fp32 and bf16."""
    import resnetlab.bench.run as bench_run
    import resnetlab.engine.runtime as runtime

    seen = []
    monkeypatch.setattr(bench_run, "run_bench", lambda spec, variants: seen.append(variants[0]) or {})
    monkeypatch.setattr(bench_run, "format_table", lambda result: "")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert main(["bench", "--task", "train", "--precision", "fp16", "--no-isolate"]) == 0
    assert "warning: this CPU has no fp16 instructions (avx512_fp16 or amx_fp16), so fp16 is emulated" in capsys.readouterr().err
    assert seen[0].precision == "fp16" and not seen[0].fused and not seen[0].label.endswith("-fused")


def test_weights_of_another_class_count_are_benchmarked_on_any_images(folder, tmp_path):
    """A 3-class fine-tune was refused on 10-class images ("fc.bias (3,) vs model (10,)"): the model
    was built with the images' class count. Speed and agreement need no labels."""
    from resnetlab.bench.measure import weights_classes

    torch.save(create_model("resnet8", num_classes=3).state_dict(), tmp_path / "three.pt")
    assert weights_classes(str(tmp_path / "three.pt"), 10) == 3
    assert weights_classes(None, 10) == 10 and weights_classes(str(tmp_path / "missing.pt"), 10) == 10
    spec = BenchSpec(model="resnet8", task="infer", batch_size=8, images=16, data=str(folder), reps=1,
                     weights=str(tmp_path / "three.pt"), isolate=False)
    result = run_bench(spec, [])
    assert result["results"][0]["top1_agreement"] == 1.0 and result["results"][0]["per_s"] > 0


def test_a_measuring_process_words_its_errors_as_its_parent_would(monkeypatch):
    """bench's variants run in spawned processes, which start outside any command: `resnetlab bench` printed
    `use precision="fp32"` where every other command says `--precision fp32`."""
    import resnetlab.bench.run as bench_run
    from resnetlab.errors import command_line, in_command, option

    def fails(*args):
        raise UserError(f"use {option('--precision fp32', 'precision=' + repr('fp32'))}")
    monkeypatch.setattr(bench_run, "_measure", fails)
    for words, said in ((True, "use --precision fp32"), (False, "use precision='fp32'")):
        with pytest.raises(UserError, match=said):
            bench_run._measure_in(words)
    with command_line():
        assert in_command()
    assert not in_command()
