HELP = ("Export a checkpoint (or published weights by name) to ONNX, TorchScript or safetensors, then run the "
        "export and compare it with PyTorch.")

import json
import sys
from pathlib import Path

from resnetlab.inference.export import FORMATS

from .arguments import add_checkpoint_argument

REAL_IMAGES = 16  # real images checked when --images is not given (from the run's own test data)


def add_arguments(parser):
    parser.epilog = ("stdout holds only the report (one JSON object with --json); messages go to stderr. Exit status: "
                     "0 written and checked (unreadable --images are named on stderr, listed under \"failed\" with "
                     "--json, and left out of the check); 1 the check FAILED (one line on stderr says how; the "
                     "failed file is left beside --out as NAME.failed.SUFFIX to inspect, not to use, and --out is as "
                     "it was); 2 an error (one line on stderr; nothing written).")
    add_checkpoint_argument(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="FILE", help=".onnx, .pt (TorchScript) or .safetensors")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size (default: batch 1)")
    parser.add_argument("--images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="real images for the check (default: up to 16 from the run's test data, if present)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def default_images(artifact) -> list[str]:
    """A few images of the split the run was tested on, when its data folder is still there."""
    from resnetlab.inference.inputs import folder_images

    root = artifact.data_config().get("root")
    for split in ("test", "val"):
        if root and (Path(root) / split).is_dir():
            paths = folder_images(Path(root) / split)
            return paths[:: max(1, len(paths) // REAL_IMAGES)][:REAL_IMAGES]  # spread over the classes
    return []


def real_batch(artifact, inputs):
    """(uint8 (N, 3, S, S) or None, the unreadable files as predict lists them): the images
    preprocessed exactly as predict does (centre view)."""
    import torch

    from resnetlab.inference.inputs import collect_images
    from resnetlab.inference.predictor import Predictor, failures

    from .predict import report_failed

    paths = collect_images(inputs) if inputs else default_images(artifact)
    if not paths:
        return None, []
    predictor = Predictor.from_checkpoint(artifact, device="cpu", precision="fp32", fuse=False, channels_last="false")
    views = [v[0] for v, _ in predictor.batches(paths)]
    real = torch.cat(views) if views else None
    # each unreadable file named on stderr; images the user gave of which none reads: no check, so no export
    failed = failures(predictor)
    report_failed("export", failed, len(paths), 0 if real is None and inputs else len(paths), "; nothing was exported")
    return real, failed


def run(args):
    from resnetlab.errors import UserError, count
    from resnetlab.engine.checkpoint import refuse_out_over_checkpoint
    from resnetlab.engine.sources import load_source
    from resnetlab.inference.export import EXPORT_NAMES, ExportCheckFailed, check_out, export_checkpoint
    from resnetlab.inference.export_meta import steps
    from resnetlab.inference.out_guard import refuse_foreign

    if args.dynamic_batch and args.format == "safetensors":  # weights have no batch size: the flag would do nothing
        raise UserError("--dynamic-batch is for ONNX exports (TorchScript takes any batch already); a safetensors "
                        "export holds weights, with no batch size")
    check_out(args.format, args.out)
    artifact, source = load_source(args.checkpoint)
    refuse_out_over_checkpoint(args.out, source)
    refuse_foreign(args.out, args.format, f"{EXPORT_NAMES[args.format]} export")
    real, failed = real_batch(artifact, args.images)
    bad = len(failed)
    try:
        report = export_checkpoint(artifact, args.format, args.out, args.dynamic_batch, real)
    except ExportCheckFailed as err:
        print(f"resnetlab export: check FAILED: {err}", file=sys.stderr)
        return 1
    if args.json:  # "failed" as predict lists them: the check ran on the others
        print(json.dumps({**report, "failed": failed}))
        return 0
    if args.format == "safetensors":
        print(f"wrote {report['out']} (weights for resnetlab.load_weights; checkpoint metadata under 'resnetlab')")
    else:
        print(f"wrote {report['out']} ({report['format']}, input float32 (B, 3, {report['input_size']}, "
              f"{report['input_size']}) RGB 0..255, batch {'dynamic' if report['dynamic_batch'] else '1'})")
    for name, diff in report["max_abs_diff"].items():
        print(f"  checked against PyTorch on {name}: max abs diff {diff:.3g}")
    meta = report["metadata"]
    names = ", ".join(meta["classes"][:5]) + (", ..." if len(meta["classes"]) > 5 else "")
    print(f"  metadata read back from the file: {meta['num_classes']} classes ({names}); "
          f"{steps(meta['preprocessing'])}; values 0..255 (exact rules under 'preprocessing')")
    if real is None and args.format != "safetensors":
        why = ("pass --images IMAGE_OR_FOLDER" if not bad else  # else the run's own test images, named on stderr
               f"the run's {count(bad, 'test image')} could not be read")
        print(f"  (no real images checked: {why})")
    elif bad:
        print(f"  ({count(bad, 'unreadable image file')} skipped)")
    return 0
