"""What a run says about its data before training: images per class in each split, the files
skipped or ignored, classes missing from val/test, class imbalance; the record written to
RUN/data.json; class-balanced loss weights.
"""
from __future__ import annotations

import os
import statistics
from collections import Counter
from pathlib import PurePath

import torch

from resnetlab.errors import option

from .fingerprints import fingerprint_changes
from .folder import IMAGE_EXTS, SPLITS

IMBALANCE_WARN = 5.0  # largest / smallest training class at least this: warn (when data.balance is none)
CLASSES_LISTED = 12  # more classes than this: the counts line gives the range, not every class
FILES_LISTED = 3


def class_counts(dataset, num_classes: int) -> list[int]:
    return torch.bincount(dataset.labels, minlength=num_classes).tolist()


def loss_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights n / (classes * count) (sklearn's "balanced"): every class
    contributes as much to the loss as it would in a balanced set of the same size."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).float()


def counts_line(bundle) -> str:
    """Images per class and split, e.g. 'images per class (train/val/test): cat 40/10/-, dog 8/2/-'."""
    splits = [(name, d) for name, d in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
              if d is not None]
    counts = {name: class_counts(d, len(bundle.classes)) for name, d in splits}
    if len(bundle.classes) > CLASSES_LISTED:
        train = counts["train"]
        low, high = min(range(len(train)), key=train.__getitem__), max(range(len(train)), key=train.__getitem__)
        median = f"{statistics.median(train):.1f}".removesuffix(".0")  # halfway between two counts: 8.5
        return (f"training images per class: {train[low]} ({bundle.classes[low]}) to {train[high]} "
                f"({bundle.classes[high]}), median {median}; every count in data.json")
    names = "/".join(name for name, _ in splits)
    per_class = ", ".join(f"{c} {'/'.join(str(counts[s][i]) for s, _ in splits)}" for i, c in enumerate(bundle.classes))
    return f"images per class ({names}): {per_class}"


def imbalance_warning(bundle, balance: str) -> str | None:
    """A warning when the largest training class has IMBALANCE_WARN x the images of the smallest or
    more and nothing compensates (data.balance=none)."""
    train = class_counts(bundle.train, len(bundle.classes))
    present = [i for i, n in enumerate(train) if n]  # folders refuse an empty class; small synthetic sets may have one
    low, high = min(present, key=train.__getitem__), max(present, key=train.__getitem__)
    if balance != "none" or train[high] < IMBALANCE_WARN * train[low]:
        return None
    return (f"imbalanced classes: {bundle.classes[high]!r} has {train[high]} training images, {bundle.classes[low]!r} "
            f"{train[low]} ({train[high] / train[low]:.1f}x); the model will favour the large classes. "
            f"{option('--set ', '')}data.balance=sampler draws every class equally often, data.balance=loss weights "
            "the loss instead")


def notes(bundle, balance: str) -> list[str]:
    """The lines a run logs about its data at the start (the imbalance warning is separate)."""
    provenance = bundle.provenance
    lines = [counts_line(bundle)]
    if provenance.get("layout") == "classes":
        lines.append(f"{provenance['root']} has no train/ folder: its class folders are the training images")
    held = provenance.get("validation", {})
    if held.get("from") == "held out of train":
        images = f"{held['images']} training image{'s' * (held['images'] != 1)}"
        lines.append(f"validation: {images} held out (data.val_size={held['val_size']}, seed {held['seed']}); "
                     "listed in data.json")
    if balance != "none":
        lines.append(f"data.balance={balance}: " + ("every class drawn equally often" if balance == "sampler"
                                                    else "cross-entropy weighted by n / (classes x count)"))
    if provenance.get("ignored"):
        lines.append(ignored_line(provenance["ignored"], provenance.get("layout")))
    return lines


def ignored_line(ignored: list[str], layout: str | None = None) -> str:
    """'ignored 3 files: 1 image outside any class folder (stray.jpg; move it into its class folder),
    2 files that are not images (.md 1, .txt 1): README.md, cat/notes.txt'. ignored: paths relative to the
    root; layout: "classes" (ROOT/<class>/) or "splits" (ROOT/<split>/<class>/), which tells a file
    beside the class folders from one in them."""
    depth = 2 if layout == "splits" else 1  # parts of a path that lies beside the class folders
    loose = [p for p in ignored if PurePath(p).suffix.lower() in IMAGE_EXTS and len(PurePath(p).parts) == depth]
    others = [p for p in ignored if p not in loose]
    listed = lambda paths: ", ".join(paths[:FILES_LISTED]) + ", ..." * (len(paths) > FILES_LISTED)  # noqa: E731
    parts = []
    if loose:
        one = len(loose) == 1
        parts.append(f"{len(loose)} image{'' if one else 's'} outside any class folder ({listed(loose)}; to train on "
                     f"{'it, move it into its class folder' if one else 'them, move them into their class folders'})")
    if others:
        kinds = Counter(PurePath(p).suffix.lower() or "no extension" for p in others)
        parts.append(f"{len(others)} file{'s' * (len(others) != 1)} that {'are' if len(others) != 1 else 'is'} "
                     f"not {'images' if len(others) != 1 else 'an image'} "
                     f"({', '.join(f'{k} {n}' for k, n in kinds.most_common())}): {listed(others)}")
    return f"ignored {'; '.join(parts)}"


def data_record(bundle) -> dict:
    """RUN/data.json: where the data came from, images per class and split, what was held out
    for validation (files relative to the root, or indices into the training split), and the
    files ignored or skipped: found unreadable as the data was read, then those met while decoding
    (photos are checked by their headers first; their splits' `unreadable`)."""
    provenance = bundle.provenance
    splits = (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
    skipped = dict(provenance.get("skipped", []))
    for _, split in splits:
        skipped.update((p, r) for p, r in getattr(split, "unreadable", {}).items() if p not in skipped)
    return {
        "dataset": provenance.get("dataset"), "root": provenance.get("root"), "layout": provenance.get("layout"),
        "classes": list(bundle.classes),
        "images_per_class": {name: dict(zip(bundle.classes, class_counts(d, len(bundle.classes))))
                             for name, d in splits if d is not None},
        "validation": provenance.get("validation"),
        "ignored_files": provenance.get("ignored", []),
        "skipped_files": [{"path": p, "reason": r} for p, r in skipped.items()],
        "fingerprints": provenance.get("fingerprints"),  # folders: per split (data.fingerprints)
        "overlap": provenance.get("overlap"),  # folders: images shared by two splits (data.overlap)
    }


def record_changes(saved: dict, now: dict, splits: tuple = SPLITS) -> list[str]:
    """What differs between two data records (data.json as a run wrote it, and `data_record` of the
    data as built now) in `splits`, e.g. 'classes were bird, cat, dog; now cat, dog, zebra'. The root
    is left out: the same images in a moved folder are the same data."""
    if saved.get("classes") != now.get("classes"):
        return [f"classes were {', '.join(saved.get('classes') or [])}; now {', '.join(now.get('classes') or [])}"]
    changes = []
    was, new = saved.get("images_per_class") or {}, now.get("images_per_class") or {}
    for split in sorted((was.keys() | new.keys()) & set(splits), key=SPLITS.index):
        a, b = was.get(split) or {}, new.get(split) or {}
        if a != b:
            differ = [c for c in now["classes"] if a.get(c) != b.get(c)]
            more = ", ..." if len(differ) > FILES_LISTED else ""
            changes.append(f"{split} images per class were {per_class(a, differ[:FILES_LISTED])}{more}; "
                           f"now {per_class(b, differ[:FILES_LISTED])}{more}")
    if not changes and saved.get("validation") != now.get("validation"):
        changes.append("the images held out for validation are not the ones data.json lists")
    if not changes:  # none in records of older runs
        changes += fingerprint_changes({k: v for k, v in (saved.get("fingerprints") or {}).items() if k in splits},
                                       now.get("fingerprints") or {})
    return changes


def per_class(counts: dict, classes: list[str]) -> str:
    return ", ".join(f"{c} {counts.get(c, 0)}" for c in classes)


def describe_skipped(skipped: list[tuple[str, str]], root, shown: int = 3) -> str:
    """One line: how many files data.skip_bad dropped, the first few (relative to root), and where
    to see every file with its reason."""
    prefix = str(root).rstrip(os.sep) + os.sep
    names = [p[len(prefix):] if p.startswith(prefix) else p for p, _ in skipped[:shown]]
    text = f"data.skip_bad: skipped {len(skipped)} unreadable file{'s' * (len(skipped) != 1)}"
    if skipped:
        text += f" ({', '.join(names)}{', ...' if len(skipped) > shown else ''})"
    return text + f"; `resnetlab data {root} --skip-bad` lists every file with its reason"


def describe_unvalidated(missing: list[str], classes: list[str], val_size, shown: int = 5) -> str:
    """One line for classes a hold-out took no image of (too few images each to share out, a class's last image
    never held out): the validation error, and so best.pt and the plateau schedule, go by the other classes."""
    names = ", ".join(missing[:shown]) + (", ..." if len(missing) > shown else "")
    return (f"data.val_size={val_size} holds out no image of {len(missing)} of the {len(classes)} classes ({names}: too "
            f"few images each), so the validation error (and best.pt) goes by the other {len(classes) - len(missing)}; "
            "add images to them, or give the folder a val/ with every class")


def describe_empty(split: str, empty: list[str], classes: list[str], shown: int = 5) -> str:
    """One line for a val/ or test/ folder without images of some classes (a missing class folder,
    or every file of it skipped): its error is over the other classes only."""
    rest = [c for c in classes if c not in empty]
    others = ", ".join(rest) if len(rest) <= shown else f"the other {len(rest)} classes"
    return (f"{split}/ has no images of class {', '.join(empty)}: its {'validation' if split == 'val' else split} "
            f"error counts only {others}")
