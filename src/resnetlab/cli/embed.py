HELP = "Write one embedding (pooled features before the classifier) per image: .npy + names, or .safetensors."

from .arguments import AUTO_PRECISIONS, FILE_PROTOCOLS, INFERENCE_AUTO, add_checkpoint_argument
from .predict import exit_status, report_failed


def add_arguments(parser):
    parser.epilog = ("The embeddings go to --out; stdout holds one summary line, messages go to stderr. "
                     + exit_status("embed", "embedded", "the others' embeddings are written", "nothing written"))
    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders (recursive)")
    parser.add_argument("--out", required=True, metavar="FILE", help="FILE.npy (+ FILE.names.txt) or FILE.safetensors")
    parser.add_argument("--protocol", choices=FILE_PROTOCOLS, default="center",
                        help="10crop: the mean embedding of the 10 views")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=AUTO_PRECISIONS, default="auto", help=INFERENCE_AUTO)


def run(args):
    from resnetlab.engine.checkpoint import refuse_out_over_checkpoint
    from resnetlab.inference.embed import embed_files, output_paths, refuse_newlines, save_embeddings
    from resnetlab.inference.inputs import collect_images
    from resnetlab.inference.predictor import Predictor

    from .console import ImageProgress

    output_paths(args.out)  # checked before any image is read
    paths = collect_images(args.inputs)  # a folder without images is refused there
    if len(output_paths(args.out)) == 2:
        refuse_newlines(paths)  # before the work, not after it
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.precision)
    for out in output_paths(args.out):
        refuse_out_over_checkpoint(out, predictor.source)
    with ImageProgress("embed") as progress:
        names, emb, failed = embed_files(predictor, paths, args.protocol, args.batch_size, progress)
    # nothing to write: no empty file that looks like a result
    report_failed("embed", failed, len(paths), len(names), f"; nothing was written to {args.out}")
    written = save_embeddings(args.out, names, emb, {"checkpoint": predictor.source, "protocol": args.protocol})
    print(f"{len(names)} embeddings of dimension {emb.shape[1]} -> {', '.join(written)}")
    return 1 if failed else 0
