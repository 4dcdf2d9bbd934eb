"""The test at the end of a training run: the last weights, and the best-by-validation weights when
they differ (kept in memory by this session, else read from checkpoints/best.pt)."""
from __future__ import annotations

import torch

from .checkpoint import load_checkpoint
from .confusion import record_per_class
from .evaluate import evaluate_split
from .run_records import RunSummary
from .setup import Run


def final_test(run: Run, best_state) -> RunSummary:
    """Test error of the last weights and of the best-by-validation weights (when both exist)."""
    ckpts = run.workdir / "checkpoints"
    summary = RunSummary(steps=run.state.step, best_val_top1_err=run.state.best_val_err, elapsed_s=run.state.elapsed_s,
                         checkpoints={"last": str(ckpts / "last.pt")}, runtime=run.state.runtime)
    if run.cfg.train.stop_at_val_top1 is not None:
        summary.target = {"val_top1": run.cfg.train.stop_at_val_top1, "reached": run.state.reached_target}
    if (ckpts / "best.pt").exists() or best_state is not None:
        summary.checkpoints["best"] = str(ckpts / "best.pt")
    if run.bundle.test is None:
        return summary
    protocol = run.cfg.train.test_protocol
    test = lambda: evaluate_split(run.scored, run.bundle.test, run.cfg.data, run.eval_spec, protocol, confusion=True)  # noqa: E731
    summary.test["last"] = test()
    if best_state is None and "best" in summary.checkpoints:  # best found before a resume
        best_state = load_checkpoint(ckpts / "best.pt").artifact.weights
    if best_state is not None:
        current = run.model.state_dict()
        # best.pt loads on the CPU; the model may be on a GPU
        if all(torch.equal(current[k], v.to(current[k].device)) for k, v in best_state.items()):  # last is best
            summary.test["best"] = summary.test["last"]
        else:
            run.model.load_state_dict(best_state)
            summary.test["best"] = test()
    record_per_class(summary.test, run.bundle.classes, run.workdir if run.dist_info.is_main else None)
    return summary
