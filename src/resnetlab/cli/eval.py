HELP = "Top-1/top-5 accuracy of a checkpoint, run directory (its best.pt) or published weights, by a testing protocol."

import json

from .arguments import add_checkpoint_argument


def add_arguments(parser):
    add_checkpoint_argument(parser)
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the run trained on)")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--protocol", choices=["center", "10crop", "multiscale"], default="center")
    parser.add_argument("--batch-size", type=int, help="default: the run's optim.batch_size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                        help="default: the run's own; int8: quantized on the CPU, calibrated on 256 training images")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from resnetlab.engine import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.protocol, args.device,
                                 args.precision, args.batch_size, args.workers)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['checkpoint']}  split={report['split']}  protocol={report['protocol']}  n={report['n']}  "
          f"precision={report['precision']}")
    print(f"  top-1 acc {report['top1']:6.2f}%   error {report['top1_err']:6.2f}%")
    print(f"  top-5 acc {report['top5']:6.2f}%   error {report['top5_err']:6.2f}%")
    return 0
