"""A trained run and one of its splits, ready for the agreement suites (benchmarks/*_agreement.py).

The split is rebuilt as `resnetlab eval` rebuilds it (engine.evaluate.eval_data: the checkpoint's
own config, seed and val_size; one line when the run has no such split), decoded once through the
evaluation loader (centre views) and normalised, so every path compared scores the very same
tensors.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnetlab.config import Config
from resnetlab.data import LoaderSpec, make_eval_loader
from resnetlab.engine.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
from resnetlab.engine.evaluate import eval_data
from resnetlab.errors import UserError

BATCH = 256


@dataclass
class TrainedSplit:
    path: Path  # the checkpoint file
    model_name: str
    model: nn.Module  # fp32, eval mode, on the CPU
    normalizer: nn.Module
    cfg: Config
    train: object  # the run's training split (int8 calibration)
    batches: list  # [(normalised float (B, 3, S, S), labels (B,))]

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([y for _, y in self.batches])


def run_suite(main) -> None:
    """Run a suite's main(); a bad input (no such split, no data) ends it in one line, as the CLI does."""
    try:
        main()
    except UserError as err:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {err}")


def agreement_arguments(doc: str, default_out: Path) -> argparse.Namespace:
    """The command line every agreement suite takes: RUN_DIR|CHECKPOINT, --split, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--out", default=str(default_out))
    return parser.parse_args()


def trained_split(run: str, split: str) -> TrainedSplit:
    path = checkpoint_path(run)
    artifact = load_checkpoint(path).artifact
    model, normalizer, _, cfg = model_from_checkpoint(artifact)
    dataset, train = eval_data(cfg, None, split, normalizer=normalizer)
    batches = [(normalizer(views[0]).float(), y) for views, y in make_eval_loader(dataset, cfg.data, LoaderSpec(BATCH))]
    return TrainedSplit(path, artifact.model_name, model.eval(), normalizer, cfg, train, batches)
