"""`resnetlab models`: every registered network with its size and cost."""
from __future__ import annotations

import json

from resnetlab.models.registry import FAMILIES
from resnetlab.models.resnet import STRIDE_ON

HELP = "List the registered models: family, depth, parameters and multiply-adds."


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    parser.add_argument("--family", choices=FAMILIES, help="only this family")
    parser.add_argument("--stride-on", choices=STRIDE_ON, default="3x3",
                        help="bottleneck stride placement for the counts (1x1 = the paper's Table 1)")


def model_rows(family: str | None = None, stride_on: str = "3x3") -> list[dict]:
    from resnetlab.models import list_models, model_info, profile

    rows = []
    for name in list_models():
        info = model_info(name)
        if family and info.family != family:
            continue
        kwargs = {"stride_on": stride_on} if info.family == "imagenet" else {}
        prof = profile(name, **kwargs)
        rows.append({"name": name, "family": info.family, "depth": info.depth, "residual": info.residual,
                     "preact": info.preact, "params": prof.params, "macs": prof.macs,
                     "input_size": prof.input_size})
    return rows


def run(args) -> int:
    rows = model_rows(args.family, args.stride_on)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<20} {'family':<9} {'depth':>5} {'params':>9} {'mult-adds':>10} {'input':>7}")
    for r in rows:
        print(f"{r['name']:<20} {r['family']:<9} {r['depth']:>5} {r['params'] / 1e6:>8.2f}M "
              f"{r['macs'] / 1e9:>9.3f}G {r['input_size']:>3}x{r['input_size']:<3}")
    return 0
