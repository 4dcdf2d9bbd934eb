"""Linear probe: a frozen backbone, its features computed once, a logistic regression on top.

The fast fine-tuning baseline (config finetune.linear_probe=true, usually with finetune.init).
Every image of the train (and val) split goes once through the backbone with the evaluation
transform (centre view, no augmentation); a multinomial logistic regression with an L2 penalty is
fitted on the pooled features by full-batch L-BFGS, its penalty picked on the val split. The
result is written into the model's own `fc`, so the run directory holds checkpoints (best.pt =
last.pt) that `resnetlab eval`, `predict`, `export` and --init use like any other; they hold the
model alone, no training state, since nothing trains after the fit. --resume of a probe stopped
before its summary.json fits it again from the start (the same fit); of a finished one, says so.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetlab.config import Config
from resnetlab.data.summary import data_record, loss_weights, notes
from resnetlab.errors import ResnetlabWarning, UserError, option
from resnetlab.files import StorageError, write_text_atomic

from .checkpoint import save_checkpoint, seed_rngs
from .confusion import record_per_class
from .distributed import DistInfo, dist_info_from_env
from .finetune import without_init_warning
from .init_normalizer import init_normalizer
from .evaluate import EvalModel, evaluate_split, run_eval_spec
from .metrics_csv import write_metrics_csv
from .preflight import check_resumed_data
from .records import Checkpoint
from .run_records import MetricsRow, RunSummary
from .runtime import autocast, make_runtime, prepare_model, to_input
from .rundir import RunDirLock, refuse_out_in_data, resume_point, saved_config, tidy_for_start
from .setup import build_model, check_config, write_workdir
from .state import RunFinished, make_artifact, new_run_from, storage_refusal

PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # L2 strengths tried when there is a val split
LBFGS_STEPS = 300


@torch.no_grad()
def extract_features(model, normalizer, dataset, cfg: Config, rt, batch_size: int = 256):
    """(float32 (N, num_features) pooled features, int64 (N,) labels) with the evaluation transform."""
    from resnetlab.data import LoaderSpec, make_eval_loader
    from resnetlab.models.features import embed

    model.eval()
    feats, labels = [], []
    for views, y in make_eval_loader(dataset, cfg.data, LoaderSpec(batch_size, device=rt.device)):
        with autocast(rt):
            feats.append(embed(model, to_input(normalizer(views[0]), rt)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float, steps: int = LBFGS_STEPS,
                 weight: torch.Tensor | None = None):
    """Multinomial logistic regression: mean cross-entropy (class-weighted by `weight`: data.balance,
    whose sampler and loss weighting are the same thing for a fit on every image at once)
    + penalty/2 ||W||^2 (bias not penalised).

    Solved on standardised features (for L-BFGS's conditioning), then mapped back so that
    logits = x @ W.T + b on the raw features. Returns (W (K, D), b (K,)).
    """
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mu) / sigma).double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, weight=weight) + 0.5 * penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w.detach() / sigma.double()).float()
    return w_raw, (b.detach() - w.detach() @ (mu / sigma).double()).float()


def error_rate(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return 100.0 * ((x @ w.T + b).argmax(1) != y).double().mean().item()


def edge_note(errors: dict) -> str | None:
    """A line when the best penalty is the grid's largest or smallest and strictly better than its neighbour:
    the validation error was still falling there, and a penalty outside the grid might do better."""
    if len(errors) < 2:
        return None
    ranked, chosen = sorted(errors), min(errors, key=lambda p: (errors[p], p))  # as choose_penalty picks
    for edge, inner, side in ((ranked[-1], ranked[-2], "largest"), (ranked[0], ranked[1], "smallest")):
        if edge == chosen and errors[edge] < errors[inner]:
            return (f"the linear probe's L2 penalty is the {side} tried ({edge:g}: validation error {errors[edge]:.2f}% "
                    f"against {errors[inner]:.2f}% at {inner:g}), so one past it might do better; the fit is kept, and "
                    "metrics.jsonl lists the validation error of each penalty")
    return None


def choose_penalty(train, val, num_classes: int, default: float, weight=None) -> tuple[float, dict]:
    """The L2 strength with the lowest val error (the smaller one on ties); `default` without val."""
    if val is None:
        return default, {}
    errors = {p: error_rate(*val, *fit_logistic(*train, num_classes, p, weight=weight)) for p in PENALTIES}
    return min(PENALTIES, key=lambda p: (errors[p], p)), errors


def train_linear_probe(cfg: Config, workdir, stream=None, resume: bool = False) -> RunSummary:
    """Fit the probe and write the run directory (config, data.json, checkpoints, metrics.jsonl, summary.json).

    resume=True (--resume, --resume-if-exists) behaves as for a training run: a finished probe is
    said in one line and its summary returned, nothing rewritten (a scheduler's rerun succeeds); an
    unfinished one (stopped before its summary.json) is fitted again from the start, which, the fit
    being deterministic, gives the run it would have been.
    """
    from resnetlab.data import build_data

    if dist_info_from_env().enabled:
        raise UserError("the linear probe runs in one process (its features are computed once); run it without torchrun")
    check_config(cfg)  # an unknown model is refused before minutes of data, and leaves no folder
    workdir, rt, start = Path(workdir), make_runtime(cfg.train), time.perf_counter()
    say = lambda msg: print(msg, file=stream or sys.stderr, flush=True)  # noqa: E731  (stdout holds only the summary)
    with RunDirLock(workdir) as lock:
        done = finished_probe(workdir, resume)
        if done is not None:
            print(done, file=stream or sys.stderr, flush=True)
            return done.summary
        if not resume:
            refuse_out_in_data(workdir, cfg.data.root, cfg.data.dataset)
        resume_point(workdir, resume)  # an --out that holds a run or others' files is refused before anything is written
        seed_rngs(cfg.train.seed)
        init_norm = init_normalizer(cfg.finetune)  # the features are the init's: normalised as it learnt them
        bundle = build_data(cfg.data, seed=cfg.train.seed, normalizer=init_norm and init_norm[0])
        if resume:
            check_resumed_data(workdir, bundle)
            say(f"{workdir}: the linear probe was not finished; fitting it again from the start")
        model, _ = build_model(cfg, bundle.classes, say=say)  # a bad init is refused before the folder is made
        if init_norm:  # once the init is accepted
            say(f"normalisation: {init_norm[1]}, as the init weights learnt (finetune.init_normalizer=false: "
                "data.normalize)")
        if without_init_warning(cfg.finetune):
            warnings.warn(without_init_warning(cfg.finetune), ResnetlabWarning, stacklevel=2)
        write_workdir(workdir, cfg, bundle, is_main=True, lock=lock)
        for line in tidy_for_start(workdir, 0, None) + notes(bundle, cfg.data.balance):
            say(line)
        # what a training run's preflight writes: eval --split val and --resume check the data against it
        write_text_atomic(workdir / "data.json", json.dumps(data_record(bundle), indent=1))
        try:
            return _fit_and_write(cfg, workdir, bundle, model, rt, start, say)
        except StorageError as err:  # what to do about it, and that --resume then fits it again
            raise storage_refusal(err, workdir) from err


def finished_probe(workdir: Path, resume: bool) -> RunFinished | None:
    """For --resume: RunFinished when the probe in `workdir` is complete (summary.json, written last,
    and its checkpoint); None when it is to be fitted (again). A training run there is refused:
    fitting a probe over it would replace its checkpoints."""
    if not resume:
        return None
    saved = saved_config(workdir)
    if saved is not None and not saved.finetune.linear_probe:
        raise UserError(f"{workdir} holds a training run, not a linear probe; continue it without "
                        f"finetune.linear_probe=true, or fit a probe on its weights in a new folder "
                        f"({new_run_from(workdir)})")
    try:
        summary = RunSummary.read(workdir)
    except UserError:  # damaged: the probe is fitted and written again
        return None
    if summary is None or not summary.linear_probe or not (workdir / "checkpoints" / "last.pt").is_file():
        return None
    return RunFinished(f"{workdir} finished: nothing to resume (a linear probe is fitted once; to fit another, "
                       f"choose another {option('--out', 'workdir')})", summary)


def _fit_and_write(cfg: Config, workdir: Path, bundle, model, rt, start: float, say) -> RunSummary:
    model, normalizer = prepare_model(model, rt), bundle.normalizer.to(rt.device)
    train = extract_features(model, normalizer, bundle.train, cfg, rt)
    val = extract_features(model, normalizer, bundle.val, cfg, rt) if bundle.val is not None else None
    k = len(bundle.classes)
    weight = None if cfg.data.balance == "none" else loss_weights(train[1], k).double()
    penalty, val_errors = choose_penalty(train, val, k, cfg.optim.weight_decay, weight)
    if edge_note(val_errors):
        warnings.warn(edge_note(val_errors), ResnetlabWarning, stacklevel=2)
    w, b = fit_logistic(*train, k, penalty, weight=weight)
    with torch.no_grad():
        model.fc.weight.copy_(w.to(model.fc.weight))
        model.fc.bias.copy_(b.to(model.fc.bias))

    scored, spec = EvalModel(model, normalizer, rt), run_eval_spec(cfg, DistInfo(), rt)
    metrics = MetricsRow(epoch=0, step=0, train_err=error_rate(*train, w, b), extra={
        "linear_probe": True, "penalty": penalty, "val_errors_by_penalty": {str(p): e for p, e in val_errors.items()},
        "feature_dim": train[0].shape[1], "train_images": len(train[1])})
    if bundle.val is not None:
        v = evaluate_split(scored, bundle.val, cfg.data, spec)
        metrics.val_top1_err, metrics.val_top5_err, metrics.val_top1, metrics.val_top5 = (
            v["top1_err"], v["top5_err"], v["top1"], v["top5"])
    metrics.elapsed_s = time.perf_counter() - start
    # Nothing trains after the fit, so the checkpoint is the artifact alone: no optimizer, nothing to resume.
    ckpt = Checkpoint(make_artifact(model, cfg, bundle.classes, normalizer.state()))
    ckpts = workdir / "checkpoints"
    for name in ("last.pt", "best.pt"):
        save_checkpoint(ckpt, ckpts / name)
    write_text_atomic(workdir / "metrics.jsonl", json.dumps(metrics.to_dict()) + "\n")
    write_metrics_csv(workdir)
    summary = RunSummary(linear_probe=True, penalty=penalty, best_val_top1_err=metrics.val_top1_err,
                         elapsed_s=metrics.elapsed_s, checkpoints={"last": str(ckpts / "last.pt"), "best": str(ckpts / "best.pt")})
    if bundle.test is not None:
        result = evaluate_split(scored, bundle.test, cfg.data, spec, cfg.train.test_protocol, confusion=True)
        summary.test = {"last": result, "best": result}
        record_per_class(summary.test, bundle.classes, workdir)
    summary.write(workdir)
    return summary
