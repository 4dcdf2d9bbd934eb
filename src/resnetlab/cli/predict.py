HELP = "Classify images (files or folders) with a checkpoint or published weights; the preprocessing comes with them."

import json
import sys

from resnetlab.errors import shown

from .arguments import AUTO_INFERENCE_PRECISIONS, FILE_PROTOCOLS, INFERENCE_AUTO, add_checkpoint_argument


def exit_status(command: str, done: str, partial: str, failed: str) -> str:
    """The --help epilog of a command that reads image files: what each exit status means."""
    return (f"Exit status: 0 every image {done}; 1 some files could not be read (each named on stderr: 'resnetlab "
            f"{command}: warning: skipped FILE: REASON'), {partial}; 2 an error, none of the images readable "
            f"included (one line on stderr, {failed}).")


def add_arguments(parser):
    parser.epilog = ("stdout holds only results: a line per image (then the --verify line), or with --json one "
                     "object whose \"failed\" lists the unreadable files, or with --jsonl one object per line: "
                     "{\"file\", \"top\"} per image as it is done, then {\"file\", \"error\"} per unreadable file "
                     "and {\"verify\"}; messages go to stderr. "
                     + exit_status("predict", "classified", "the others' results are complete", "nothing on stdout"))
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)")
    parser.add_argument("--topk", type=int, help="classes to report per image (default 5)")
    parser.add_argument("--protocol", choices=FILE_PROTOCOLS, default="center")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=AUTO_INFERENCE_PRECISIONS, default="auto",
                        help=f"{INFERENCE_AUTO}; int8: quantized, CPU only, calibrated on --calibrate (check it "
                             "with --verify)")
    parser.add_argument("--calibrate", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="int8: representative images for the activation ranges (default: the inputs); "
                             "up to 256 are used, spread evenly")
    parser.add_argument("--no-fuse", action="store_true", help="keep BatchNorm separate (slower; for debugging)")
    parser.add_argument("--verify", action="store_true",
                        help="also run plain fp32 and report the fast path's top-1 agreement with it")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object (once every image is done)")
    output.add_argument("--jsonl", action="store_true",
                        help="print one JSON object per line, each image's as it is done (any number of images)")


def run(args):
    from resnetlab.errors import UserError
    from resnetlab.inference.inputs import collect_images
    from resnetlab.inference.predictor import Predictor, failures, iter_predictions, predict_files, top1_agreement

    from .console import ImageProgress

    paths = collect_images(args.inputs)  # a folder without images is refused there
    if args.calibrate and args.precision != "int8":
        raise UserError("--calibrate is for --precision int8")
    int8 = args.precision == "int8"
    device = "cpu" if int8 and args.device == "auto" else args.device  # the quantized kernels are CPU kernels
    predictor = Predictor.from_checkpoint(args.checkpoint, device, "fp32" if int8 else args.precision,
                                          fuse=not args.no_fuse)
    asked, args.topk = args.topk, 5 if args.topk is None else args.topk
    if asked is not None and asked > len(predictor.classes):  # the default 5 of a 2-class model goes without saying
        print(f"resnetlab predict: --topk {args.topk}: the model has {len(predictor.classes)} classes; each image lists "
              "every one", file=sys.stderr, flush=True)
    if int8:
        try:
            calibration = collect_images(args.calibrate) if args.calibrate else paths
        except UserError as err:  # said of --calibrate, not of the images to predict
            raise UserError(f"--calibrate: {err}") from None
        predictor = predictor.quantized(calibration, batch_size=args.batch_size)
    if args.json:  # one object: every result first
        with ImageProgress("predict") as progress:  # nothing is printed until every image is done
            results, failed = predict_files(predictor, paths, args.topk, args.protocol, args.batch_size, progress)
        report_failed("predict", failed, len(paths), len(results))
        check = top1_agreement(predictor, paths, args.protocol, args.batch_size) if args.verify else None
        print(json.dumps({"checkpoint": predictor.source, "protocol": args.protocol, "precision": predictor.precision,
                          "results": results, "failed": failed, **({"verify": check} if check else {})}))
        return 1 if failed else 0
    # A line per image as its batch is done: a long run shows progress, and a Ctrl-C keeps what was printed.
    done = 0
    for i, top in iter_predictions(predictor, paths, args.topk, args.protocol, args.batch_size):
        done += 1
        # a line per image whatever its name: newlines, ESC ... escaped (JSON: as it is)
        print(json.dumps({"file": paths[i], "top": top}) if args.jsonl else
              shown(paths[i]) + "  " + "  ".join(f"{t['class']} {t['prob']:.4f}" for t in top), flush=True)
    failed = failures(predictor)
    report_failed("predict", failed, len(paths), done)
    for f in failed if args.jsonl else ():
        print(json.dumps(f))
    if args.verify:
        check = top1_agreement(predictor, paths, args.protocol, args.batch_size)
        if args.jsonl:
            print(json.dumps({"verify": check}))
            return 1 if failed else 0
        layout = (", channels_last" if check["channels_last"] else "") + (", compiled" if check["compiled"] else "")
        bn = "BN kept" if args.no_fuse else "folded BN"
        print(f"fast path ({check['precision']}, {bn}{layout}) vs plain fp32: top-1 agreement "
              f"{check['top1_agreement']:.2f}% on {check['n']} images, max |prob diff| {check['max_abs_prob_diff']:.2e}")
    return 1 if failed else 0


def report_failed(command: str, failed: list[dict], total: int, done: int, nothing: str = "") -> None:
    """The unreadable files, one line each on stderr (stdout holds only results); then, when not
    one of the `total` images could be read (`done` == 0), a UserError (exit status 2) ending in
    `nothing`."""
    for f in failed:
        print(f"resnetlab {command}: warning: skipped {shown(f['file'])}: {f['error']}", file=sys.stderr, flush=True)
    if failed and not done:
        from resnetlab.errors import UserError

        raise UserError(("the image given could not be read" if total == 1 else
                         f"none of the {total} images could be read") + nothing)
