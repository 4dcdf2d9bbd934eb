"""How much the training loop itself costs: data, logging, checkpointing around train_step.

Method: run the real `train_and_evaluate` for n1 and for n2 steps (whole epochs, so both runs
end the same way: a checkpoint and the final test evaluation); the difference of the two wall
times divided by n2 - n1 is the loop's steady-state time per step, with a checkpoint every
epoch and a log line every `log_every` steps included. The same configuration's bare
`train_step` on batches made beforehand gives the time of the work itself; overhead = loop /
bare - 1. The data is in memory (synthetic, CIFAR-sized), as CIFAR is in real runs.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass

import torch

from resnetlab.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from resnetlab.errors import UserError

from .timing import stats, stopwatch, timed


@dataclass(frozen=True)
class LoopSpec:
    """What the loop-overhead measurement runs: a model on synthetic data, `epochs` of
    `steps_per_epoch` steps each for the two whole runs, and `reps` timed bare steps."""
    model: str = "resnet20"
    batch_size: int = 128
    steps_per_epoch: int = 100
    size: int = 32
    epochs: tuple[int, int] = (1, 3)
    precision: str = "auto"
    channels_last: str = "auto"
    warmup: int = 2
    reps: int = 10
    log_every: int = 50


def loop_config(spec: LoopSpec) -> Config:
    data = DataConfig(dataset="synthetic", synthetic_size=spec.steps_per_epoch * spec.batch_size, val_size=0,
                      image_size=spec.size)
    return Config(model=ModelConfig(name=spec.model), data=data, optim=OptimConfig(batch_size=spec.batch_size, lr=0.01),
                  schedule=ScheduleConfig(kind="cosine", max_steps=spec.steps_per_epoch),
                  train=TrainConfig(device="cpu", precision=spec.precision, channels_last=spec.channels_last,
                                    log_every=spec.log_every))


def loop_seconds(cfg: Config, steps: int) -> float:
    """Wall time of a whole train_and_evaluate run of `steps` steps, its output swallowed."""
    from resnetlab.engine import train_and_evaluate

    cfg.schedule.max_steps = steps
    with tempfile.TemporaryDirectory(prefix="resnetlab-loop-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        with stopwatch() as run:
            train_and_evaluate(cfg, tmp, stream=io.StringIO())
        return run.s


def bare_step_seconds(cfg: Config, warmup: int, reps: int) -> list[float]:
    """Per-step times of train_step alone, cycling over batches made before timing starts."""
    from resnetlab.data import LoaderSpec, build_data, make_train_loader
    from resnetlab.engine.heap import held_heap, huge_pages
    from resnetlab.engine.runtime import make_grad_scaler, make_runtime, prepare_model
    from resnetlab.engine.setup import make_sgd
    from resnetlab.engine.train import StepParts, train_step
    from resnetlab.models import create_model

    rt = make_runtime(cfg.train)
    bundle = build_data(cfg.data, seed=cfg.train.seed)
    batches = list(make_train_loader(bundle.train, cfg.data, LoaderSpec(cfg.optim.batch_size, device=rt.device)))[:8]
    torch.manual_seed(cfg.train.seed)
    model = prepare_model(create_model(cfg.model.name, num_classes=len(bundle.classes)).train(), rt)
    o = cfg.optim  # the loop's optimizer: SGD with momentum, weight decay on every parameter
    optimizer = make_sgd(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    scaler, normalizer = make_grad_scaler(rt), bundle.normalizer.to(rt.device)
    parts, i = StepParts(model, optimizer, scaler, normalizer, rt), 0

    def step():
        nonlocal i
        x, y = batches[i % len(batches)]
        train_step(parts, x, y)
        i += 1
    with held_heap(cfg.train.hold_heap and rt.device.type == "cpu"):  # as in the loop (engine/heap.py)
        step(), step()
        huge_pages()  # as the loop does after each epoch's second step
        return timed(step, warmup, reps, rt.device)


def measure_loop_overhead(spec: LoopSpec) -> dict:
    n1, n2 = (e * spec.steps_per_epoch for e in spec.epochs)
    if not 0 < n1 < n2:
        raise UserError(f"loop overhead needs 0 < epochs[0] < epochs[1] and steps_per_epoch >= 1, got {spec.epochs}, "
                        f"{spec.steps_per_epoch}")
    cfg = loop_config(spec)
    bare = stats(bare_step_seconds(cfg, spec.warmup, spec.reps), spec.batch_size)
    t1, t2 = loop_seconds(cfg, n1), loop_seconds(cfg, n2)
    loop_step = (t2 - t1) / (n2 - n1)
    return {"model": spec.model, "batch_size": spec.batch_size, "image_size": spec.size, "steps_per_epoch": spec.steps_per_epoch,
            "runs_steps": [n1, n2], "runs_s": [t1, t2], "loop_step_s": loop_step, "bare_step": bare,
            "overhead": loop_step / bare["median_s"] - 1}


def format_loop(result: dict) -> str:
    bare = result["bare_step"]
    return (f"{result['model']} batch {result['batch_size']} at {result['image_size']}px, "
            f"{result['steps_per_epoch']} steps/epoch: train_and_evaluate {result['loop_step_s'] * 1e3:.1f} ms/step "
            f"(runs of {result['runs_steps'][0]} and {result['runs_steps'][1]} steps), bare train_step "
            f"{bare['median_s'] * 1e3:.1f} ms (spread {bare['min_s'] * 1e3:.1f}-{bare['max_s'] * 1e3:.1f}); "
            f"loop overhead {100 * result['overhead']:+.1f}%")
