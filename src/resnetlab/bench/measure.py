"""Measuring one variant: training steps/s and inference throughput/latency, with peak memory.

Each variant (spec.Variant: the baseline, ours in a precision, memory format and compile mode,
or auto: the inference path predict takes, inference.fastpath.prepare_inference) is set up here
and run once (`prepare_train`, `prepare_infer`). Each measurement warms up, then times every
repetition separately, round-robin across variants, whether they share a process (`time_all`,
with timing.interleaved) or each has its own (processes.py); `stats` turns those times into a
median and a spread. Peak memory on the CPU is the growth of the process's peak RSS (peak_rss)
over its RSS just before the model is built -- torch's allocations are invisible to
tracemalloc -- so each variant is meant to run in a fresh process (see run.py).
"""
from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from resnetlab.data import LoaderSpec, make_train_loader
from resnetlab.engine.heap import hold_heap, huge_pages
from resnetlab.engine.runtime import COMPILE_MODES, Runtime, autocast, compile_model, make_grad_scaler, prepare_model, to_input
from resnetlab.engine.setup import make_sgd
from resnetlab.engine.train import StepParts, train_step
from resnetlab.errors import UserError
from resnetlab.models import create_model

from .baseline import PILFolderDataset, baseline_loader, baseline_workers, endless
from .images import BenchImages, bench_data_config, decoded, fitted_normalizer
from .spec import BenchSpec, Variant
from .timing import interleaved, stats, stopwatch

CALIBRATION_BATCHES = 4  # int8: batches whose activation ranges set the quantization scales


class PeakMemory:
    """Peak memory grown while the block runs: GPU allocator peak, or CPU peak RSS growth (MiB)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.init()  # the allocator's statistics exist only after CUDA's lazy start
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            self.start = current_rss()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        else:
            self.mib = max(0.0, peak_rss() - self.start) / 2**20


def current_rss() -> int:
    """Resident bytes now (Linux /proc; elsewhere the peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Linux: start the process's peak RSS (VmHWM) afresh from its current RSS; elsewhere nothing."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak resident bytes of this process's own memory (Linux VmHWM: since its exec or the last
    reset_peak_rss). Not getrusage's ru_maxrss where avoidable: on Linux a spawned child's starts
    at its parent's size when it forked."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def runtime_of(variant: Variant, device: torch.device) -> Runtime:
    if variant.pipeline == "auto":
        raise UserError("variant auto takes its runtime from inference.fastpath.prepare_inference, not from runtime_of")
    if variant.compile not in COMPILE_MODES:
        raise UserError(f"--compile {variant.compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if variant.pipeline == "baseline" or variant.precision == "int8":  # int8 takes fp32 NCHW in and out
        return Runtime(device, "fp32", False)
    return Runtime(device, variant.precision, variant.channels_last, fused_bn=variant.fused)


def seeded_model(name: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # every variant (every process) starts from the same weights
    return create_model(name, num_classes=num_classes)


def endless_train_batches(variant: Variant, images: BenchImages, size: int, batch_size: int, rt: Runtime, cache_dir: Path):
    """(endless iterator of (x, y) on the device, the normaliser train_step should apply)."""
    data = decoded(images, size, cache_dir)
    normalizer = fitted_normalizer(data)
    if variant.pipeline == "baseline":
        ds = PILFolderDataset(images.paths, images.labels.tolist(), size, normalizer.mean.flatten(), normalizer.std.flatten())
        moved = ((x.to(rt.device), y.to(rt.device)) for x, y in endless(baseline_loader(ds, batch_size, baseline_workers(rt.device))))
        return moved, torch.nn.Identity()  # the baseline normalises per sample, in the dataset
    cfg = bench_data_config(size)

    def ours():
        epoch = 0
        while True:
            yield from make_train_loader(data, cfg, LoaderSpec(batch_size, device=rt.device), seed=0, epoch=epoch)
            epoch += 1
    if len(data) < batch_size:
        raise UserError(f"--images {len(data)} is fewer than one batch ({batch_size}); raise --images")
    return ours(), normalizer.to(rt.device)


def bench_step_parts(model: torch.nn.Module, rt: Runtime, net: torch.nn.Module | None = None,
                     normalizer: torch.nn.Module | None = None, baseline: bool = False) -> StepParts:
    """What train_step needs for `model` in every training benchmark: SGD (lr 0.01, momentum 0.9,
    weight decay 1e-4; fused as training makes it, engine.setup.make_sgd, but for the baseline),
    the runtime's grad scaler, `net` called (the model compiled, or itself)."""
    settings = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    optimizer = torch.optim.SGD(model.parameters(), **settings) if baseline else make_sgd(model.parameters(), **settings)
    return StepParts(model if net is None else net, optimizer, make_grad_scaler(rt),
                     torch.nn.Identity() if normalizer is None else normalizer, rt)


@dataclass
class Prepared:
    """A variant set up and run once: what to time (name -> (fn, images per call)) and what the
    setup saw (first call time, peak memory, predictions)."""
    variant: Variant
    timers: dict
    info: dict


def prepare_train(spec: BenchSpec, variant: Variant, images: BenchImages, cache_dir: Path) -> Prepared:
    """A full training step to time: next batch from the pipeline, forward, backward, SGD."""
    model_name, size, batch_size, device = spec.model, spec.size, spec.batch_size, torch.device(spec.device)
    rt = runtime_of(variant, device)
    if spec.isolate and variant.pipeline != "baseline" and device.type == "cpu":
        hold_heap()  # in this variant's own process, as `resnetlab train` runs (engine/heap.py); not the baseline's
    batches, normalizer = endless_train_batches(variant, images, size, batch_size, rt, cache_dir)
    with PeakMemory(device) as mem:
        model = prepare_model(seeded_model(model_name, len(images.classes)).train(), rt)
        parts = bench_step_parts(model, rt, compile_model(model, variant.compile), normalizer,
                                 baseline=variant.pipeline == "baseline")

        def step():
            x, y = next(batches)
            train_step(parts, x, y)
        with stopwatch(device) as first:
            step()  # the first step pays for compilation; reported on its own
    huge_pages()  # where hold_heap() took above, as the training loop does once the heap has grown (engine/heap.py)
    return Prepared(variant, {"main": (step, batch_size)}, {"first_step_s": first.s, "peak_mem_mib": mem.mib})


SETTLE = 1  # untimed calls of a variant right before each of its timed calls (see timing.interleaved)


def time_all(prepared: list[Prepared], warmup: int, reps: int, device: torch.device) -> list[dict]:
    """Warm every variant up, then time them round-robin, one call each per round, so a change in
    the machine's load during the run hits every variant alike. Returns one row per variant."""
    fns = {(i, name): fn for i, p in enumerate(prepared) for name, (fn, _) in p.timers.items()}
    starts = {}
    # One variant alone (a process of its own on a GPU) follows only itself: nothing to settle.
    times = interleaved(fns, warmup, reps, device, settle=SETTLE if len(prepared) > 1 else 0, starts=starts)
    return rows_from_times([(p.variant, {name: items for name, (_, items) in p.timers.items()}, p.info)
                            for p in prepared], times, starts)


def rows_from_times(entries: list[tuple[Variant, dict, dict]], times: dict, starts: dict) -> list[dict]:
    """One row per (variant, timer name -> images per call, setup info), from times[(index, timer
    name)]: seconds per call, in round order, and starts[(index, timer name)]: time.monotonic() at
    each call's start. The row keeps the main timer's seconds (`seconds`), so run.add_ratios can
    pair the variants' calls round by round, and when each started (`started_s`, from the run's
    first timed call), so the machine's drift can be seen."""
    first = min(min(t) for t in starts.values())
    rows = []
    for i, (variant, items, info) in enumerate(entries):
        row = {"variant": variant.label, **variant.__dict__, **info, **stats(times[i, "main"], items["main"]),
               "seconds": list(times[i, "main"]), "started_s": [t - first for t in starts[i, "main"]]}
        if "b1" in items:
            lat = stats(times[i, "b1"], 1)
            row.update(latency_b1_ms=lat["median_s"] * 1e3, latency_b1_spread_ms=[lat["min_s"] * 1e3, lat["max_s"] * 1e3])
        rows.append(row)
    return rows


def inference_fn(model: torch.nn.Module, variant: Variant, rt: Runtime, normalizer):
    """uint8 batch -> logits, the way `variant` runs inference."""
    if variant.pipeline == "baseline":
        def run(x):
            with torch.no_grad():
                return model(normalizer(x))
        return run
    net = compile_model(model, variant.compile)
    # Freezing lets inductor treat the weights as constants (fold, pre-pack for oneDNN): valid
    # only because inference never changes them.
    freezing = contextlib.nullcontext() if variant.compile == "none" else torch._inductor.config.patch(freezing=True)

    def run(x):
        with torch.inference_mode(), autocast(rt), freezing:
            return net(to_input(normalizer(x), rt)).float()
    return run


def prepare_infer(spec: BenchSpec, variant: Variant, images: BenchImages, cache_dir: Path) -> Prepared:
    """Inference at the spec's batch size and at batch 1 to time, and top-1 predictions on every
    image (trained `spec.weights`, or seeded ones with BN calibrated on the images)."""
    from resnetlab.inference.fastpath import prepare_inference
    from resnetlab.models import load_weights
    from resnetlab.models.fuse import fuse_bn
    from resnetlab.models.quantize import quantize_int8

    model_name, size, batch_size, device = spec.model, spec.size, spec.batch_size, torch.device(spec.device)
    weights = spec.weights
    rt = runtime_of(variant, device) if variant.pipeline != "auto" else None
    data = decoded(images, size, cache_dir)
    normalizer = (trained_normalizer(weights) or fitted_normalizer(data)).to(device)
    x_all = data.images.to(device)
    if len(x_all) < batch_size:
        raise UserError(f"--images {len(x_all)} is fewer than one batch ({batch_size}); raise --images")
    with PeakMemory(device) as mem:
        model = seeded_model(model_name, weights_classes(weights, len(images.classes)))
        if weights:
            load_weights(model, weights)
        model = model.to(device)  # BN calibration runs the images where they are
        if not weights:
            calibrate_bn(model, normalizer, x_all, batch_size)
        if variant.pipeline == "auto":  # the very path predict, eval and embed take (compiled model cached)
            model, rt = prepare_inference(model, model_name, str(device), "auto", size)
            run = inference_fn(model, replace(variant, compile="none"), rt, normalizer)
        else:
            if variant.pipeline == "ours":
                model = fuse_bn(model)  # BN folded into the convolutions (also what inductor freezing does)
            if variant.precision == "int8":  # activation ranges from the first batches of the same images
                model = quantize_int8(model, [normalizer(x) for x in x_all.split(batch_size)[:CALIBRATION_BATCHES]])
            run = inference_fn(prepare_model(model.eval(), rt), variant, rt, normalizer)
        with stopwatch(device) as first:
            preds = torch.cat([run(x).argmax(1).cpu() for x in x_all.split(batch_size)])
        batch, one = x_all[:batch_size], x_all[:1]
        run(one)  # batch 1 is a new shape: a compiled variant compiles it here, not while timed
    return Prepared(variant, {"main": (lambda: run(batch), batch_size), "b1": (lambda: run(one), 1)},
                    {"first_pass_s": first.s, "peak_mem_mib": mem.mib, "predictions": preds.tolist()})


def weights_classes(weights: str | None, default: int) -> int:
    """The class count of trained weights (their classifier's rows), else `default` (the images'): a
    3-class fine-tune was refused on 10-class images, though speed and agreement need no labels."""
    from resnetlab.models import layouts
    from resnetlab.models.weights import read_state_dict

    if not weights:
        return default
    try:
        state = read_state_dict(weights)
        fc = layouts.rename(state, layouts.detect(state)).get("fc.weight")
    except UserError:  # an unreadable file: load_weights says what is wrong with it
        return default
    return fc.shape[0] if isinstance(fc, torch.Tensor) and fc.dim() == 2 else default


def trained_normalizer(weights: str | None):
    """The normaliser a resnetlab checkpoint was trained with, or None (no weights, or a plain
    weights file). Trained weights fed other input statistics score near chance, and their
    top-1 agreement would then measure noise, not the variant."""
    from resnetlab.data import Normalizer
    from resnetlab.engine.checkpoint import load_checkpoint

    if not weights:
        return None
    try:
        return Normalizer.from_state(load_checkpoint(weights).artifact.normalizer)
    except UserError:  # not a resnetlab checkpoint; a missing or unreadable file is load_weights' to report
        return None


def calibrate_bn(model: torch.nn.Module, normalizer, x_all: torch.Tensor, batch_size: int, batches: int = 4) -> None:
    """Without trained weights, set BN running statistics from real images (fp32, deterministic),
    so eval-mode activations have realistic scales and predictions are not all one class."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for x in x_all.split(batch_size)[:batches]:
            model(normalizer(x))
