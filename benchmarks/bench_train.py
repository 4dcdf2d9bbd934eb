"""Training speed of record: ResNet-20 (CIFAR, 32 px) and ResNet-50 (224 px) against the baseline.

    python benchmarks/bench_train.py --data /path/to/cifar10-jpeg          # results of record
    python benchmarks/bench_train.py --quick                              # smoke run, synthetic data

Writes benchmarks/results/train_<model>.json (and loop_resnet20.json: the training loop's own
overhead). Run it on an otherwise idle machine; the files record the load average.
"""
from pathlib import Path

from resnetlab.bench.loop import LoopSpec, format_loop, measure_loop_overhead
from resnetlab.bench.run import run_and_save, suite_parser, write_json
from resnetlab.bench.spec import BenchSpec, parse_variant

RESULTS = Path(__file__).parent / "results"
# (model, batch, images, variants): fp32 = our loader with the baseline's model settings, so the
# data pipeline's share of the gain can be told apart from the model's.
# -fused: batch-norm + ReLU (+ residual) fused (models/fused_bn.py), what eager CPU training uses.
SUITE = [
    ("resnet20", 128, 2048, ["fp32", "fp32-cl", "bf16-cl", "fp32-cl-default", "fp32-cl-fused", "bf16-cl-fused"]),
    ("resnet50", 32, 256, ["fp32", "fp32-cl", "bf16-cl", "fp32-cl-default", "fp32-cl-fused", "bf16-cl-fused"]),
]


def main():
    parser = suite_parser(__doc__, RESULTS)
    args = parser.parse_args()
    for model, batch, images, variants in SUITE:
        if args.models and model not in args.models:
            continue
        if args.quick:
            batch, images = 4, 16
        spec = BenchSpec(model=model, task="train", batch_size=batch, images=images, data=args.data,
                         threads=args.threads, warmup=1 if args.quick else 2, reps=2 if args.quick else (5 if model == "resnet50" else 10))
        run_and_save(spec, [parse_variant(v) for v in args.variants or variants], Path(args.out) / f"train_{model}.json")
    if not args.models or "resnet20" in args.models:
        loop = measure_loop_overhead(LoopSpec("resnet20", *((8, 2) if args.quick else (128, 100)), size=32,
                                              reps=2 if args.quick else 20))
        print(format_loop(loop))
        write_json(loop, Path(args.out) / "loop_resnet20.json")


if __name__ == "__main__":  # the guard matters: each variant runs in a spawned process that imports this file
    main()
