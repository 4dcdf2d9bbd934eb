"""`resnetlab weights`: the published weights resnetlab knows, fetched into and checked in torch.hub's cache."""
from __future__ import annotations

import json

HELP = "Published weights by name: list them, fetch them into the torch.hub cache, verify the cache."


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="every published weights file: model, dataset, accuracy, size, cached")
    listing.add_argument("--model", help="only weights for this model")
    listing.add_argument("--json", action="store_true", help="print a JSON array (name, model, url, ...)")
    fetch = sub.add_parser("fetch", help="download (or find in the cache) and check these weights",
                           description="Download (or find in torch.hub's cache, $TORCH_HOME/hub/checkpoints) and "
                           "check these weights. Without network access: RESNETLAB_WEIGHTS_MIRROR=URL_OR_FOLDER "
                           "fetches MIRROR/<host>/<path> for each published https://<host>/<path>. A server that "
                           "sends nothing for a minute is given up.")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("verify", help="re-hash every cached weights file against its published digest")


def weight_rows(model: str | None = None) -> list[dict]:
    """One JSON-ready record per entry, with where it is cached and whether it is there."""
    from dataclasses import asdict

    from resnetlab.models import hub, model_info
    from resnetlab.models.pretrained import list_weights

    if model is not None:
        model_info(model)  # an unknown model is one line naming the choices, not an empty table
    rows = []
    for w in list_weights(model):
        path = hub.cached_file(w)
        cached = path.is_file()
        rows.append({
            "name": w.name, "model": w.model, "model_kwargs": w.kwargs, "dataset": w.dataset,
            "num_classes": w.num_classes, "top1": w.top1, "top5": w.top5, "accuracy_note": w.accuracy_note,
            "url": w.urls[0], "urls": list(w.urls), "sha256": w.sha256, "hash_prefix": w.hash_prefix,
            "file_format": w.file_format, "layout": w.layout, "preprocess": asdict(w.preprocess),
            "publisher": w.publisher, "license": w.license, "source": w.source,
            "size_mb": round(path.stat().st_size / 1e6, 3) if cached else w.file_size_mb,
            "cached": cached, "file": str(path), "size_as_published": size_as_published(path, w) if cached else None,
        })
    return rows


def size_as_published(path, entry) -> bool | None:
    """Whether a cached file has the published size (within 0.5%: timm's is published to the MB): a
    cheap sign of a truncated or wrong file that `list` can show for every entry; `verify` re-hashes.
    None: no size is published (but an empty file is never the weights)."""
    if path.stat().st_size == 0:
        return False
    if entry.file_size_mb is None:
        return None
    return abs(path.stat().st_size / 1e6 - entry.file_size_mb) <= 0.005 * entry.file_size_mb


def _table(rows: list[dict]) -> None:
    print(f"{'name':<26} {'model':<10} {'dataset':<11} {'classes':>7} {'top-1':>6} {'size':>8}  cached")
    for r in rows:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "?"
        size = f"{r['size_mb']:.1f}MB" if r["size_mb"] is not None else "?"
        cached = "no" if not r["cached"] else "yes" if r["size_as_published"] is not False else "DAMAGED?"
        print(f"{r['name']:<26} {r['model']:<10} {r['dataset']:<11} {r['num_classes']:>7} {top1:>6} {size:>8}  {cached}")
    odd = [r["name"] for r in rows if r["size_as_published"] is False]
    if odd:
        print(f"{', '.join(odd)}: the cached file's size is not the published one; `resnetlab weights verify` re-hashes "
              "it, `resnetlab weights fetch NAME` replaces a damaged one")


def run(args) -> int:
    from resnetlab.models import hub
    from resnetlab.models.pretrained import get_weights, list_weights

    if args.action == "list":
        rows = weight_rows(args.model)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            _table(rows)
            print(f"cache: {hub.cache_dir()}  (top-1 in %, on the dataset's test/val split as published)")
        return 0
    if args.action == "fetch":
        entries = [get_weights(name) for name in args.names]  # every name checked before any download
        for entry in entries:
            path = hub.fetch(entry, progress=not args.quiet, replace_damaged=True)
            digest = hub.expected_digest(entry)
            check = f"SHA-256 {digest[:16]}... checked" if digest else "no published digest; format checked"
            print(f"{entry.name}: {path} ({check})")
        return 0
    checks = hub.verify_cache(list_weights())
    if not checks:
        print(f"no published weights in the cache ({hub.cache_dir()})")
    for c in checks:
        print(f"{c.name}: {c.status} ({c.path})" if c.ok else f"{c.name}: FAILED: {c.status}")
    return 0 if all(c.ok for c in checks) else 1
