HELP = ("Check a dataset and get it ready: download CIFAR, decode a small-image folder into the cache, "
        "list unreadable files.")

import argparse
import json
import warnings

from resnetlab.config import DataConfig
from resnetlab.config.loading import AMBIGUOUS_ONE
from resnetlab.data import FileDataset
from resnetlab.data.build import DATASETS
from resnetlab.errors import shown
from resnetlab.errors import ResnetlabWarning, UserError


def add_arguments(parser):
    parser.add_argument("data", metavar="DIR", nargs="?", help="dataset folder: train/<class>/ images, "
                        "or the CIFAR python files / archive (or where to download them)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="what DIR holds (default: worked out from DIR)")
    parser.add_argument("--download", action="store_true", help="CIFAR: fetch the official archive if missing")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files (listed) instead of failing")
    parser.add_argument("--verify", action="store_true",
                        help="decode every photo, not only its header, to find files cut short or damaged past it "
                             "(a folder of small images is always decoded whole)")
    parser.add_argument("--val-size", type=count_or_fraction, default=0,
                        help="images to hold out of train: a count, or a fraction such as 0.2 (default 0)")
    parser.add_argument("--cache-dir", help="where decoded small-image folders are cached")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def count_or_fraction(text: str) -> int | float:
    """--val-size: 500 is a count, 0.2 a fraction (checked with the rest of the data config)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if value == 1.0 and not text.strip().isdigit():  # the one whole float that reads as either
        raise argparse.ArgumentTypeError(f"{text!r}: {AMBIGUOUS_ONE}")
    return int(value) if value.is_integer() else value


def data_config(args) -> DataConfig:
    from resnetlab.engine.datadir import data_overrides

    cfg = DataConfig(dataset=args.dataset or "folder", download=args.download, skip_bad=args.skip_bad,
                     val_size=args.val_size, cache_dir=args.cache_dir)
    if args.data is None:
        if cfg.dataset != "synthetic":
            raise UserError("give the dataset folder DIR (or --dataset synthetic)")
        return cfg
    if args.download and args.dataset in ("cifar10", "cifar100"):
        cfg.root = args.data  # may not exist yet: the archive is downloaded into it
        return cfg
    for key, value in data_overrides(args.data, cfg.dataset):
        if key == "data.root" or args.dataset is None:
            setattr(cfg, key.split(".", 1)[1], value)
    return cfg


def run(args):
    from resnetlab.data import build_data, describe
    from resnetlab.data.folder import SPLITS

    with warnings.catch_warnings():
        if args.verify:  # a photo skipped while the normaliser's sample is decoded: --verify lists it with the rest
            warnings.filterwarnings("ignore", message="data.skip_bad: skipped", category=ResnetlabWarning)
        bundle = build_data(data_config(args), warn_skipped=False)  # every skipped file is listed below
    skipped = bundle.provenance.get("skipped", [])
    photos = [name for name in SPLITS if isinstance(getattr(bundle, name), FileDataset)]
    if args.verify:
        skipped += verify_photos(bundle, photos, args.skip_bad)
    headers_only = bool(photos) and not args.verify
    if args.json:
        sizes = {name: len(getattr(bundle, name)) for name in SPLITS if getattr(bundle, name) is not None}
        print(json.dumps({"summary": describe(bundle), "classes": bundle.classes, "sizes": sizes,
                          "skipped": [{"path": p, "reason": r} for p, r in skipped], "decoded_whole": not headers_only,
                          "empty_classes": bundle.provenance.get("empty_classes", {}),
                          "caches": bundle.provenance.get("caches", []),
                          "overlap": bundle.provenance.get("overlap")}))
        return 0
    print(describe(bundle))
    for path, reason in skipped:
        print(f"  skipped {shown(path)}: {reason}")
    if headers_only:
        print("  photos checked by their headers: one cut short or damaged past it is found as it is decoded "
              "(--verify decodes every photo now)")
    return 0


def verify_photos(bundle, splits: list[str], skip_bad: bool) -> list[tuple[str, str]]:
    """Decode every photo of `splits` once (at the smallest JPEG scale: the whole file is still read);
    an unreadable one is an error, or with skip_bad left out of its split and returned with why."""
    import torch

    from resnetlab.data.folder import decode_all

    skipped = []
    for name in splits:
        dataset = getattr(bundle, name)
        _, keep, _, reasons = decode_all(dataset.paths, 8, skip_bad=True)
        bad = [(dataset.paths[i], why) for i, why in zip((~keep).nonzero()[0].tolist(), reasons)]
        if bad and not skip_bad:
            path, why = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{path}: {why}{more}; remove it or pass --skip-bad to list every unreadable file")
        setattr(bundle, name, dataset.subset(torch.from_numpy(keep.nonzero()[0])))
        skipped += bad
    return skipped
