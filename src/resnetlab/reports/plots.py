"""PNG figures in the paper's style (matplotlib, Agg backend: no display needed).

Training error is dashed and held-out error solid, as in the paper's Fig. 1, 4 and 6; several
seeds of one config are drawn as their mean with a +- std band.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from resnetlab.files import atomic_path  # noqa: E402

from .progress import finished  # noqa: E402
from .tables import SavedRun, curve, seeds_per_step  # noqa: E402

HELD_OUT = "val_top1_err"  # the engine evaluates the held-out split during training; test only at the end


def _depth(members: list[SavedRun]) -> int:
    from resnetlab.models import model_info

    return model_info(members[0].model).depth


def _colors(labels):
    """Distinct colours for up to 10 groups (tab10), a continuous map beyond that."""
    if len(labels) <= 10:
        return {label: plt.get_cmap("tab10")(i) for i, label in enumerate(labels)}
    cmap = plt.get_cmap("viridis")
    return {label: cmap(0.9 * i / (len(labels) - 1)) for i, label in enumerate(labels)}


def _draw_group(ax, members: list[SavedRun], label: str, color, train: bool = True, held_out: bool = True) -> None:
    for key, style, suffix in (("train_err", "--", "train"), (HELD_OUT, "-", "val")):
        if (key == "train_err" and not train) or (key == HELD_OUT and not held_out):
            continue
        steps, mean, std = curve(members, key)
        if not steps:
            continue
        # seeds that stopped at different steps (train.stop_at_val_top1): the mean is over those logged at
        # each step, which the legend says; each seed's own points are drawn as dots
        apart = min(seeds_per_step(members, key)) < len(members)
        ax.plot(steps, mean, style, color=color, lw=1.6 if style == "-" else 1.2,
                label=f"{label} {suffix}" + (" (mean of the seeds at each step; dots: each seed)" if apart else ""),
                marker="o" if len(steps) == 1 else None, ms=3)  # one evaluation (a run stopped early) is a point
        for run in members if apart else ():
            points = [(m.step, getattr(m, key)) for m in run.metrics if getattr(m, key) is not None]
            ax.plot([p for p, _ in points], [v for _, v in points], ".", color=color, alpha=0.5, ms=4)
        if len(members) > 1:
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.15, lw=0)


def _legend_below(ax, ncol: int = 2, empty: str = "no evaluation logged yet") -> None:
    """The legend under the axes, outside them, so it never covers a curve (_save keeps it in the PNG).
    Axes with nothing to label (runs stopped before their first evaluation) say `empty` instead of
    an empty legend (matplotlib warns on stderr about one)."""
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
        return
    ax.legend(fontsize=7, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


def _finish(ax, title: str) -> None:
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_below(ax)


def _draw_key(ax, members: list[SavedRun], key: str, style: str, color) -> None:
    steps, mean, std = curve(members, key)
    if steps:
        ax.plot(steps, mean, style, color=color, lw=1.4, marker="." if len(steps) < 30 else None)


def plot_curves(groups: dict[str, list[SavedRun]], path, title: str = "training (dashed) and validation (solid) error") -> Path:
    """Three panels against iteration: error, training loss, learning rate; one legend under them."""
    fig, (err_ax, loss_ax, lr_ax) = plt.subplots(1, 3, figsize=(14, 4.2), sharex=True)
    colors = _colors(list(groups))
    for label, members in groups.items():
        _draw_group(err_ax, members, label, colors[label])
        _draw_key(loss_ax, members, "train_loss", "--", colors[label])
        _draw_key(lr_ax, members, "lr", "-", colors[label])
    for ax, name, ylabel in ((err_ax, title, "error (%)"), (loss_ax, "training loss (dashed)", "cross-entropy"),
                             (lr_ax, "learning rate", "lr")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    lrs = [v for line in lr_ax.get_lines() for v in line.get_ydata() if v > 0]
    if lrs and max(lrs) / min(lrs) > 20:  # step schedules: each /10 drop an equal step down
        lr_ax.set_yscale("log")
    fig.tight_layout()
    handles, labels = err_ax.get_legend_handles_labels()
    if labels:  # none when no group has an error curve (matplotlib fails on a legend of 0 columns)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 6),
                   fontsize=8, frameon=False)
    return _save(fig, path)


def plot_degradation(groups: dict[str, list[SavedRun]], path, title_note: str = "") -> Path:
    """Fig. 6 layout: plain nets left, ResNets right, one colour per depth, same y-axis."""
    from resnetlab.models import model_info

    sides = {"plain": {}, "residual": {}}
    for label, members in groups.items():
        sides["residual" if model_info(members[0].model).residual else "plain"][label] = members
    depths = sorted({_depth(members) for members in groups.values()})
    cmap = plt.get_cmap("viridis")
    color = {d: cmap(0.85 * i / max(len(depths) - 1, 1)) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, (side, members_by_label) in zip(axes, sides.items()):
        ordered = sorted(members_by_label.items(), key=lambda kv: _depth(kv[1]))
        for label, members in ordered:
            _draw_group(ax, members, label, color[_depth(members)])
        _finish(ax, f"{'plain nets' if side == 'plain' else 'ResNets'}{title_note}")
        if len(ordered) > 1:
            _zoom_on_the_end(ax, ordered, color)
    axes[0].set_ylim(bottom=0)
    fig.suptitle("dashed: training error, solid: validation error", fontsize=9)
    return _save(fig, path)


def _zoom_on_the_end(ax, ordered, color) -> None:
    """Inset: training error over the last third of the run, on its own scale, where the
    ordering by depth is decided (the paper's Fig. 6 draws 0-20% for the same reason)."""
    curves = [(_depth(members), *curve(members, "train_err")[:2]) for _, members in ordered]
    last = max((steps[-1] for _, steps, _ in curves if steps), default=0)
    tails = [(depth, [(s, m) for s, m in zip(steps, mean) if s >= 2 * last / 3]) for depth, steps, mean in curves]
    if sum(len(tail) >= 2 for _, tail in tails) < 2:
        return
    inset = ax.inset_axes([0.09, 0.07, 0.34, 0.25])  # lower left: empty once the curves have fallen
    for depth, tail in tails:
        inset.plot([s for s, _ in tail], [m for _, m in tail], "--", color=color[depth], lw=1.2)
    inset.set_title("train error, last third", fontsize=7)
    inset.tick_params(labelsize=6)
    inset.grid(alpha=0.3)


def plot_final_vs_depth(groups: dict[str, list[SavedRun]], path, key: str = "train_err") -> Path:
    """Final error against depth, plain vs residual, of the finished runs: the degradation problem in one picture."""
    from resnetlab.models import model_info

    from .tables import group_stats

    fig, ax = plt.subplots(figsize=(5.5, 4))
    done = [m for m in groups.values() if finished(m[0])]  # an unfinished run's last error is not final
    for residual, marker in ((False, "s"), (True, "o")):
        points = [(_depth(m), group_stats(m)[key]) for m in done
                  if model_info(m[0].model).residual == residual and group_stats(m)[key] is not None]
        points.sort(key=lambda point: point[0])  # by depth only: two groups of one depth have Stats, which do not compare
        if points:
            ax.errorbar([d for d, _ in points], [s.mean for _, s in points], yerr=[s.std for _, s in points],
                        marker=marker, capsize=3, label="ResNet" if residual else "plain")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel(f"final {key.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    _legend_below(ax, empty="no finished run with this error yet")
    return _save(fig, path)


def plot_layer_responses(responses: dict[str, list[float]], path, plain=()) -> Path:
    """Fig. 7: std of each 3x3 layer's BN output, by layer index (top) and sorted descending (bottom).
    plain: the labels of plain nets (drawn without markers)."""
    fig, axes = plt.subplots(2, 1, figsize=(7, 7))
    colors = _colors(list(responses))
    for label, stds in responses.items():
        style = "-" if label in plain else "-o"
        idx = range(1, len(stds) + 1)
        axes[0].plot(idx, stds, style, ms=2.5, color=colors[label], label=label)
        axes[1].plot(idx, sorted(stds, reverse=True), style, ms=2.5, color=colors[label], label=label)
    for ax, order in zip(axes, ("original", "sorted by magnitude")):
        ax.set_xlabel(f"layer index ({order})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("std of response")
        ax.grid(alpha=0.3)
    _legend_below(axes[1], ncol=4)  # one legend for both panels: same colours
    axes[0].set_title("responses of 3x3 layers after BN, before ReLU / addition (test images)")
    return _save(fig, path)


def plot_gradient_flow(norms: dict[str, dict[str, list[float]]], path, plain=()) -> Path:
    """Per-layer gradient norms, one panel per moment (init, trained), log scale; plain: as above."""
    moments = list(dict.fromkeys(m for per in norms.values() for m in per))
    fig, axes = plt.subplots(1, len(moments), figsize=(5.5 * len(moments), 4.2), sharey=True, squeeze=False)
    colors = _colors(list(norms))
    for ax, moment in zip(axes[0], moments):
        for label, per in norms.items():
            if moment in per:
                ax.plot(range(1, len(per[moment]) + 1), per[moment], "-" if label in plain else "-o", ms=2.5,
                        color=colors[label], label=label)
        ax.set_yscale("log")
        ax.set_xlabel("3x3 layer index (input side -> output side)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(moment)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax)
    axes[0][0].set_ylabel("||dL/dW|| of the layer's weights")
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Draw into a temporary file renamed over `path` (files.atomic_path): a full disk or a read-only
    folder leaves no empty or cut-off PNG and ends in one StorageError line naming `path`."""
    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            # the temporary name does not end in .png, so the format is said; "tight" takes in the legends
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)  # a figure left open on an error would be kept by pyplot for the whole process
    return path
