"""The paper's Table 6 (CIFAR-10 ResNets of increasing depth) and our runs in its form.

The params column counts the net each run built, with its model.kwargs (shortcut B's and C's
projections add parameters to option A's net); the paper column gives the paper's error only for
the net it reports: its CIFAR ResNets with option A shortcuts (Sec. 4.2), of which Table 6 lists
no variant.
"""
from __future__ import annotations

import functools
import json

from . import progress
from .tables import SavedRun, group_stats

# Table 6: CIFAR-10 test error (%). ResNet-110 is "best (mean +- std)" over 5 runs: 6.43 (6.61 +- 0.16);
# the others are single runs. Its params (0.27M ... 19.4M) are those of the nets as built here: `parameters`.
PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                "resnet1202": 7.93}
# model.kwargs of the nets the paper trained; any other value is another net (stride_on moves the stride of
# bottleneck blocks only: these nets of basic blocks are the same with either)
PAPER_NET = {"shortcut": "A", "in_chans": 3, "residual": True, "zero_init_residual": False}
SAME_NET = ("stride_on", "num_classes")


def is_paper_cifar10(members: list[SavedRun]) -> bool:
    """A group the paper's Table 6 speaks about: one of its CIFAR nets trained on 10 classes."""
    return members[0].model in PAPER_TABLE6 and members[0].num_classes == 10


def is_paper_net(run: SavedRun) -> bool:
    """The run built the very net the paper reports (its kwargs leave it as the paper's)."""
    kwargs = run.config["model"].get("kwargs") or {}
    return all(k in SAME_NET or (k in PAPER_NET and v == PAPER_NET[k]) for k, v in kwargs.items())


def parameters(run: SavedRun) -> int | None:
    """The parameter count of the run's net as built (model.kwargs, its classes); None when it cannot be built."""
    kwargs = dict(run.config["model"].get("kwargs") or {})
    if run.num_classes is not None:
        kwargs["num_classes"] = run.num_classes
    return _count(run.model, json.dumps(kwargs, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _count(model: str, kwargs: str) -> int | None:
    import torch

    from resnetlab.errors import UserError
    from resnetlab.models import create_model

    try:
        with torch.device("meta"):  # shapes only: no memory and no initialisation for ResNet-1202's 19M
            return sum(p.numel() for p in create_model(model, **json.loads(kwargs)).parameters())
    except (UserError, TypeError, ValueError):  # a hand-edited config: the table says "–"
        return None


def millions(count: int | None) -> str:
    """0.27M, 0.47M, 1.73M, 19.4M: as Table 6 writes them, one more digit where it rounds."""
    if count is None:
        return "–"
    return f"{count / 1e6:.2f}M" if count < 1e6 else f"{count / 1e6:.3g}M"


def depth_table(groups: dict[str, list[SavedRun]]) -> str:
    """Table 6's form for the finished groups it speaks about: model, params, our test error (best
    (mean ± std)) next to the paper's; `runs` counts the test errors behind it."""
    lines = ["| run | model | params | ours: test err, best (mean ± std) | runs | paper (Table 6) |",
             "|---|---|---|---|---|---|"]
    for label, members in groups.items():
        if not is_paper_cifar10(members) or not progress.finished(members[0]):
            continue
        stat, model = group_stats(members)["test_err"], members[0].model
        ours = "–" if stat is None else (f"{stat.best:.2f}" if stat.n == 1 else f"{stat.best:.2f} ({stat})")
        paper = "–"
        if is_paper_net(members[0]):
            paper = f"{PAPER_TABLE6[model]:.2f}" + (" (6.61 ± 0.16)" if model == "resnet110" else "")
        lines.append(f"| {label} | {model} | {millions(parameters(members[0]))} | {ours} | "
                     f"{0 if stat is None else stat.n} | {paper} |")
    return "\n".join(lines) + "\n"
