"""Looking inside trained nets: layer responses (the paper's Fig. 7) and per-layer gradient norms.

Fig. 7 measures "the outputs of each 3x3 layer, after BN and before other nonlinearity
(ReLU/addition)". In a post-activation block that is the BN right after each 3x3 conv: bn1
(followed by ReLU) and bn2 (followed by the addition in a ResNet, by ReLU in its plain twin),
plus the 3x3 stem of the CIFAR nets. A 6n+2-layer CIFAR net therefore has 6n+1 such layers
(19 for ResNet-20, 55 for ResNet-56): every weighted layer except the classifier. Plain and
residual twins are hooked on the same modules, so their curves are directly comparable.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UserError


def response_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(name, 3x3 conv, the BN right after it) for every 3x3 layer, from input to output."""
    from resnetlab.models.blocks import BasicBlock, Bottleneck

    layers = []
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and model.conv1.kernel_size == (3, 3):
        layers.append(("conv1", model.conv1, model.bn1))
    for s, stage in enumerate(model.stages(), 1):
        for b, block in enumerate(stage):
            if not isinstance(block, (BasicBlock, Bottleneck)):
                raise UserError(f"layer responses are defined for post-activation blocks (BN after the conv); "
                                f"{type(block).__name__} normalises before its convs -- use a resnet/plain model")
            for i in (1, 2, 3):
                conv = getattr(block, f"conv{i}", None)
                if conv is not None and conv.kernel_size == (3, 3):
                    layers.append((f"layer{s}.{b}.conv{i}", conv, getattr(block, f"bn{i}")))
    return layers


class _Moments:
    """Running sum, sum of squares and count of a tensor's elements (float64: 10k images x 64x32x32)."""

    def __init__(self):
        self.s = self.ss = 0.0
        self.n = 0

    def __call__(self, module, inputs, output):
        # Forward hooks run before the next module, so an in-place ReLU has not touched `output` yet.
        x = output.detach().double()
        self.s += x.sum().item()
        self.ss += (x * x).sum().item()
        self.n += x.numel()

    def std(self) -> float:
        mean = self.s / self.n
        return max(self.ss / self.n - mean * mean, 0.0) ** 0.5


@torch.no_grad()
def layer_responses(model: nn.Module, batches) -> list[float]:
    """Std of each 3x3 layer's BN output (see module doc) over normalised input batches, in eval mode."""
    model.eval()
    moments = [_Moments() for _ in response_layers(model)]
    handles = [bn.register_forward_hook(m) for (_, _, bn), m in zip(response_layers(model), moments)]
    try:
        seen = 0
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise UserError("layer responses need at least one image; the split is empty")
    return [m.std() for m in moments]


def gradient_norms(model: nn.Module, batches) -> list[float]:
    """L2 norm of the loss gradient w.r.t. each 3x3 layer's weights, averaged over (x, y) batches.

    The model is in training mode (BN on batch statistics), as during SGD.
    """
    model.train()
    convs = [conv for _, conv, _ in response_layers(model)]
    totals, count = torch.zeros(len(convs), dtype=torch.float64), 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        totals += torch.stack([c.weight.grad.double().norm() for c in convs])
        count += 1
    model.zero_grad(set_to_none=True)
    if not count:
        raise UserError("gradient norms need at least one batch of training images")
    return (totals / count).tolist()


# ---------------------------------------------------------------- from run directories


def _run_data(run_dir: Path, data: str | None, split: str, max_images: int, batch_size: int):
    """(model from checkpoints/last.pt, its config, normalised batches [(x, y)] of `split`)."""
    from resnetlab.config import apply_overrides
    from resnetlab.data import LoaderSpec, make_eval_loader
    from resnetlab.engine.checkpoint import model_from_checkpoint
    from resnetlab.engine.datadir import check_run_data_root, data_overrides

    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        raise UserError(f"{run_dir}: no checkpoints/last.pt; the analyses need a trained run")
    model, normalizer, _classes, cfg = model_from_checkpoint(last)
    if data is not None:
        cfg = apply_overrides(cfg, data_overrides(data, cfg.data.dataset))
    check_run_data_root(cfg)  # a moved folder is said as such, with --data, not as one without class folders
    bundle = _bundle(cfg.data, cfg.train.seed)
    dataset = {"test": bundle.test, "train": bundle.train}[split]
    if dataset is None:
        raise UserError(f"{run_dir}: its dataset at {cfg.data.root} has no {split} split")
    loader = make_eval_loader(dataset, cfg.data, LoaderSpec(batch_size))  # centre view: no augmentation
    batches, seen = [], 0
    for views, labels in loader:
        x = normalizer(views[0]).float()
        batches.append((x, labels))
        seen += len(labels)
        if seen >= max_images:
            break
    return model, cfg, batches


_BUNDLES: dict[str, object] = {}


def _bundle(data_cfg, seed: int):
    """build_data once per (data config, seed): a report analyses several runs of the same data."""
    import dataclasses
    import json

    from resnetlab.data import build_data

    key = json.dumps([dataclasses.asdict(data_cfg), seed], sort_keys=True)
    if key not in _BUNDLES:
        _BUNDLES.clear()  # keep one dataset in memory at a time
        _BUNDLES[key] = build_data(data_cfg, seed=seed)
    return _BUNDLES[key]


def run_layer_responses(run_dir, data: str | None = None, max_images: int = 2000) -> list[float]:
    """Fig. 7 for one trained run: response stds on its first `max_images` test images."""
    model, _cfg, batches = _run_data(Path(run_dir), data, "test", max_images, 250)
    return layer_responses(model, (x for x, _ in batches))


def run_gradient_norms(run_dir, data: str | None = None, num_batches: int = 4, batch_size: int = 128) -> dict:
    """Per-layer gradient norms of a run at initialisation (its seed) and with its trained weights."""
    from resnetlab.models import create_model

    model, cfg, batches = _run_data(Path(run_dir), data, "train", num_batches * batch_size, batch_size)
    torch.manual_seed(cfg.train.seed)
    fresh = create_model(cfg.model.name, num_classes=model.fc.out_features, **cfg.model.kwargs)
    init = gradient_norms(fresh, batches)
    steps = _trained_steps(Path(run_dir))
    return {"at initialisation": init, f"after training ({steps} iterations)": gradient_norms(model, batches)}


def _trained_steps(run_dir: Path) -> str:
    from resnetlab.engine.run_records import RunSummary

    summary = RunSummary.read(run_dir)
    return "?" if summary is None or summary.steps is None else str(summary.steps)
