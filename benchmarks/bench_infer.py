"""Inference speed of record: ResNet-50 at batch 32 (224 px) and ResNet-20 (32 px) against the baseline.

    python benchmarks/bench_infer.py --data /path/to/cifar10-jpeg          # results of record
    python benchmarks/bench_infer.py --quick                              # smoke run, synthetic data

Reports images/s at the batch size, latency at batch 1, peak memory, and top-1 agreement of every
variant with the baseline's fp32 predictions on the same real images (BN statistics calibrated
on them when no --weights are given). Writes benchmarks/results/infer_<model>.json.
"""
from pathlib import Path

from resnetlab.bench.run import run_and_save, suite_parser
from resnetlab.bench.spec import BenchSpec, parse_variant

RESULTS = Path(__file__).parent / "results"
# auto: the path predict, eval and embed take on this machine (inference/fastpath.py), compiled
# model from the cache (first_pass_s shows a compile where there was none cached yet)
VARIANTS = ["auto", "fp32", "fp32-cl", "bf16-cl", "fp32-cl-default", "bf16-cl-default", "int8"]
SUITE = [("resnet50", 32, 512), ("resnet20", 128, 2048)]  # (model, batch, images for the agreement check)


def main():
    parser = suite_parser(__doc__, RESULTS)
    parser.add_argument("--weights", nargs=2, action="append", default=[], metavar=("MODEL", "PATH"),
                        help="trained weights for a model's agreement check (repeatable)")
    args = parser.parse_args()
    weights = dict(args.weights)
    for model, batch, images in SUITE:
        if args.models and model not in args.models:
            continue
        if args.quick:
            batch, images = 4, 16
        spec = BenchSpec(model=model, task="infer", batch_size=batch, images=images, data=args.data,
                         weights=weights.get(model), threads=args.threads, warmup=1 if args.quick else 2, reps=2 if args.quick else 10)
        run_and_save(spec, [parse_variant(v) for v in args.variants or VARIANTS], Path(args.out) / f"infer_{model}.json")


if __name__ == "__main__":  # the guard matters: each variant runs in a spawned process that imports this file
    main()
