"""The benchmark harness behind `resnetlab bench` and benchmarks/*.py.

    spec = BenchSpec(model="resnet20", task="train", batch_size=128)
    result = run_bench(spec, [Variant("ours", "bf16", True)])   # the baseline is always measured first
    write_json(result, "benchmarks/results/train_resnet20.json")

Every variant runs in a fresh process (so its peak RSS is its own and a compiled graph cannot
leak into the next one; processes.py), or, with isolate=False, all variants share this one. On
the CPU either way times them round-robin, one timed call of each per round, each right after
an untimed one of the same variant (a VM's speed changes from one minute to the next, and a
variant timed in another minute than the baseline gets another ratio); on a GPU isolated
variants are timed one after another (timing_of). All on the same machine and in the same run
as the baseline, and reported as a ratio to it: of the medians (`speedup`), and, when timed
round-robin, per round (`speedup_per_round`: min, median, max). The machine's matrix-multiply
peak is measured in the same run, and each variant's multiply-adds per second are given as a
fraction of the peak for its dtype. What to measure is a `spec.BenchSpec` and `spec.Variant`s.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch

from resnetlab.errors import command_line, in_command
from resnetlab.files import write_text_atomic
from resnetlab.guest import guest_call
from resnetlab.models import profile

from .images import bench_images
from .machine import describe_machine, matmul_peak
from .measure import prepare_infer, prepare_train, time_all
from .processes import measure_interleaved
from .spec import AUTO, BASELINE, BenchSpec, Variant, auto_variant, check_spec, check_variants

TRAIN_MACS_PER_FORWARD = 3  # backward costs about twice the forward (input and weight gradients)


def suite_parser(description: str, results: Path) -> argparse.ArgumentParser:
    """The command line the suites of record (benchmarks/bench_train.py, bench_infer.py) share."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="ROOT/train/<class>/<image> (default: synthetic JPEGs)")
    parser.add_argument("--quick", action="store_true", help="tiny batches and few repetitions (checks, not numbers)")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--out", default=str(results))
    parser.add_argument("--models", nargs="*", help="only these models of the suite")
    parser.add_argument("--variants", nargs="*", help="these variants instead of the suite's (e.g. leave out bf16 "
                        "on a CPU that can only emulate it); the baseline is always measured")
    return parser


@guest_call  # its models are seeded (measure.seeded_model); the caller's generators are left as found
def run_bench(spec: BenchSpec, variants: list[Variant]) -> dict:
    """Baseline + variants on one machine in one run -> the result dict (see write_json)."""
    check_spec(spec)
    variants = [auto_variant(spec) if v == AUTO else v for v in variants]
    check_variants(spec, variants)
    device, load_start = torch.device(spec.device), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="resnetlab-bench-") as tmp:
        spec = replace(spec, cache_dir=spec.cache_dir or tmp)
        images = bench_images(spec.data, spec.images, workdir=str(Path(tmp) / "synthetic"))
        rows = measure_variants(spec, images, list(dict.fromkeys([BASELINE, *variants])))  # each once
    precisions = sorted({r["precision"] for r in rows})
    peaks = {p: matmul_peak(p, device) for p in precisions}
    macs = profile(spec.model, spec.size, num_classes=len(images.classes)).macs
    add_ratios(rows, macs * (TRAIN_MACS_PER_FORWARD if spec.task == "train" else 1), peaks,
               paired=timing_of(spec) == "round-robin")
    machine = describe_machine(device) | {"load_avg_1m_start": load_start}
    return {"spec": asdict(spec) | {"image_size": spec.size, "cache_dir": None}, "machine": machine,
            "timing": timing_of(spec), "matmul_peak_macs_per_s": peaks, "forward_macs_per_image": macs,
            "results": rows}


def timing_of(spec: BenchSpec) -> str:
    """How the variants' calls were ordered: round-robin (paired by round) or one variant after another."""
    return "one variant after another" if spec.isolate and torch.device(spec.device).type == "cuda" else "round-robin"


def measure_variants(spec: BenchSpec, images, variants: list[Variant]) -> list[dict]:
    """Rows for `variants`, all in this process or each in its own; timed as timing_of(spec) says."""
    if not spec.isolate:
        return _measure(spec, images, variants)
    if timing_of(spec) == "round-robin":
        return measure_interleaved(spec, images, variants)
    # On a GPU the baseline's image-decoding workers would go on filling their queue while another
    # variant is timed, stealing its CPU: there each variant is timed while it alone runs.
    rows = []
    for v in variants:  # an executor per variant: a new process each, none started beyond them
        # concurrent.futures workers are not daemonic (multiprocessing.Pool's are), so the
        # baseline's DataLoader may start its own worker processes inside one.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(_measure_in, in_command(), spec, images, [v]).result()
    return rows


def _measure_in(words: bool, *args) -> list[dict]:
    """_measure in a spawned process, its errors in a command's words where the parent's are (errors.in_command)."""
    with command_line(words):
        return _measure(*args)


def _measure(spec: BenchSpec, images, variants: list[Variant]) -> list[dict]:
    device, cache, threads = torch.device(spec.device), Path(spec.cache_dir), torch.get_num_threads()
    torch.set_num_threads(spec.threads or threads)
    try:
        if spec.task == "train":
            prepared = [prepare_train(spec, v, images, cache) for v in variants]
        else:
            prepared = [prepare_infer(spec, v, images, cache) for v in variants]
        rows = time_all(prepared, spec.warmup, spec.reps, device)
    finally:
        torch.set_num_threads(threads)  # matters only when not isolated
    if len(variants) > 1:  # a shared process's peak RSS belongs to no single variant
        for row in rows:
            row["peak_mem_mib"] = None
    return rows


def add_ratios(rows: list[dict], macs: int, peaks: dict, paired: bool = True) -> None:
    """Speed-up over the baseline (rows[0]), achieved multiply-adds/s (`macs` per image) and their
    fraction of the dtype's peak, and (inference) top-1 agreement with the baseline's predictions.
    `paired`: call r of every row was timed in the same round, so their ratios are given per round."""
    base = rows[0]
    for row in rows:
        row["speedup"] = row["per_s"] / base["per_s"]
        row["macs_per_s"] = macs * row["per_s"]
        row["peak_fraction"] = row["macs_per_s"] / peaks[row["precision"]]
        if paired:
            ratios = sorted(b / s for b, s in zip(base["seconds"], row["seconds"]))
            row["speedup_per_round"] = [ratios[0], statistics.median(ratios), ratios[-1]]
        if "predictions" in row:
            same = sum(a == b for a, b in zip(row["predictions"], base["predictions"]))
            row["top1_agreement"] = same / len(base["predictions"])
    for row in rows:
        row.pop("predictions", None)


def write_json(result: dict, path) -> Path:
    return write_text_atomic(path, json.dumps(result, indent=1) + "\n")


def format_table(result: dict) -> str:
    """The result as a plain-text table, one line per variant."""
    spec, task = result["spec"], result["spec"]["task"]
    unit = "train img/s" if task == "train" else "infer img/s"
    lines = [f"{spec['model']} {task} batch {spec['batch_size']} at {spec['image_size']}px on {result['machine']['cpu']} "
             f"({spec['threads'] or result['machine']['torch_threads']} threads, load average {result['machine']['load_avg_1m_start']:.2f} "
             f"at start, {result['machine']['load_avg_1m']:.2f} at end)",
             f"{'variant':<34}{unit:>14}{'spread':>18}{'speedup':>9}{'per round':>13}{'peak%':>8}{'mem MiB':>9}"
             + ("" if task == "train" else f"{'b1 ms':>9}{'agree':>7}")]
    for r in result["results"]:
        rounds = r.get("speedup_per_round")
        rounds = f"{rounds[0]:.2f}-{rounds[2]:.2f}x" if rounds else "-"
        line = (f"{r['variant']:<34}{r['per_s']:>14.1f}{r['per_s_min']:>9.1f}-{r['per_s_max']:<8.1f}{r['speedup']:>8.2f}x"
                f"{rounds:>13}{100 * r['peak_fraction']:>7.1f}%{'-' if r['peak_mem_mib'] is None else format(r['peak_mem_mib'], '.0f'):>9}")
        if task == "infer":
            line += f"{r['latency_b1_ms']:>9.1f}{100 * r['top1_agreement']:>6.1f}%"
        lines.append(line)
    peaks = ", ".join(f"{p} {v / 1e9:.3g} GMAC/s" for p, v in result["matmul_peak_macs_per_s"].items())
    lines.append(f"matmul peak: {peaks}; calls timed {result['timing']}")
    return "\n".join(lines)


def run_and_save(spec: BenchSpec, variants: list[Variant], path, max_load: float = 1.3) -> dict:
    """run_bench, print the table, write the JSON; warn when the machine was too busy for a result of record."""
    result = run_bench(spec, variants)
    print(format_table(result), flush=True)
    write_json(result, path)
    loads = (result["machine"]["load_avg_1m_start"], result["machine"]["load_avg_1m"])
    own = spec.threads or torch.get_num_threads()  # the benchmark's own runnable threads count in the load
    if max(loads) - own > max_load - 1:
        print(f"WARNING: load average {loads[0]:.2f} -> {loads[1]:.2f} with {own} threads of our own: other work "
              f"shared the cores, so {path} is not a result of record; rerun on a quiet machine", flush=True)
    return result
