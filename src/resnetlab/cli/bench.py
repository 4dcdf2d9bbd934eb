HELP = "Benchmark training/inference speed against the eager fp32 per-sample-PIL baseline, same machine, same run."

import warnings
from pathlib import Path

from resnetlab.bench.spec import TASKS
from resnetlab.errors import ResnetlabWarning, UserError

from .arguments import AUTO_INFERENCE_PRECISIONS, COMPILE_MODES, SWITCH, positive_int

DEFAULT_BATCH = {"train": 128, "infer": 32, "loop": 128}


def add_arguments(parser):
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--task", choices=[*TASKS, "loop"], default="train",
                        help="train: full steps/s; infer: throughput, batch-1 latency, top-1 agreement; "
                             "loop: train_and_evaluate overhead over bare train_step")
    parser.add_argument("--batch-size", type=positive_int, help="default: 128 (train, loop), 32 (infer)")
    parser.add_argument("--image-size", type=positive_int, help="default: the model's native size (32 or 224)")
    parser.add_argument("--precision", choices=AUTO_INFERENCE_PRECISIONS, default="auto",
                        help="int8: post-training quantized inference on the CPU (--task infer)")
    parser.add_argument("--channels-last", choices=SWITCH, default="auto")
    parser.add_argument("--compile", choices=COMPILE_MODES,
                        default="none", help="torch.compile mode (reduce-overhead: CUDA graphs, GPU only)")
    parser.add_argument("--variant", action="append", default=[], metavar="V",
                        help="more variants to compare, e.g. auto, fp32, bf16-cl, bf16-cl-default, bf16-cl-fused, int8 (repeatable)")
    parser.add_argument("--data", metavar="DIR", help="ROOT/train/<class>/<image> to read (default: synthetic JPEGs)")
    parser.add_argument("--images", type=int, default=512, help="images drawn from the data (loop: images per epoch)")
    parser.add_argument("--weights", help="inference: trained weights (a run directory, a checkpoint or a weights "
                        "file) for the top-1 agreement check")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="all variants in this process rather than one process each (less memory; no memory figures). "
                        "On the CPU both time the variants round-robin, each timed call after an untimed one")
    parser.add_argument("--json", metavar="PATH", help="also write the full result as JSON")


def run(args):
    import torch

    from resnetlab.bench.loop import LoopSpec, format_loop, measure_loop_overhead
    from resnetlab.bench.run import format_table, run_bench, write_json
    from resnetlab.bench.spec import BenchSpec, Variant, parse_variant
    from resnetlab.engine.checkpoint import checkpoint_path
    from resnetlab.engine.runtime import (Runtime, resolve_channels_last, resolve_device, resolve_fused_bn,
                                          resolve_precision, slow_precision_warning)
    from resnetlab.files import check_writable

    if args.json:
        check_writable(args.json)  # before the benchmark, not after it
    if args.weights is not None and args.task != "infer":  # it was taken and did nothing
        raise UserError(f"--weights is for --task infer (its top-1 agreement check); --task {args.task} times "
                        "seeded weights")
    if args.weights and Path(args.weights).is_dir():  # a run directory, as export and predict take it
        args.weights = str(checkpoint_path(args.weights))
    device = resolve_device(args.device)
    batch = args.batch_size or DEFAULT_BATCH[args.task]
    if args.task == "loop":
        if args.threads:
            torch.set_num_threads(args.threads)
        result = measure_loop_overhead(LoopSpec(args.model, batch, steps_per_epoch=max(1, args.images // batch),
                                                size=args.image_size or 32, precision=args.precision,
                                                channels_last=args.channels_last, warmup=args.warmup, reps=args.reps))
        print(format_loop(result))
    else:
        if args.precision == "int8":
            ours = parse_variant("int8")
        elif args.task == "infer" and (args.precision, args.channels_last, args.compile) == ("auto", "auto", "none"):
            ours = parse_variant("auto")  # what predict and eval run here (inference.fastpath)
        else:
            precision = resolve_precision(args.precision, device)
            ours = Variant("ours", precision, resolve_channels_last(args.channels_last), args.compile,
                           fused=args.task == "train" and resolve_fused_bn(device, args.compile, precision=precision))
            if (slow := slow_precision_warning(Runtime(device, precision, False))) is not None:  # as train and predict say
                warnings.warn(slow, ResnetlabWarning, stacklevel=2)
        spec = BenchSpec(model=args.model, task=args.task, batch_size=batch, image_size=args.image_size,
                         warmup=args.warmup, reps=args.reps, device=str(device), data=args.data, images=args.images,
                         weights=args.weights, isolate=not args.no_isolate, threads=args.threads)
        result = run_bench(spec, [ours, *map(parse_variant, args.variant)])
        print(format_table(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0
