"""int8 against fp32 on a whole split: top-1 accuracy of each and how often they pick the same class.

    python benchmarks/int8_agreement.py runs/cifar10_fast --out benchmarks/results/int8_agreement.json

Arms, all on the CPU from the run's best.pt: fp32 (BN folded), int8 with the automatic activation
width (8 bits with VNNI, else 7), and int8 with 7 and with 8 bits forced. Each int8 model is
calibrated on 256 training images spread over the split, as `resnetlab eval --precision int8`
does. 8 bits on a CPU without VNNI shows what the 7-bit default protects against: the u8 x s8
kernels' 16-bit sums saturate.
"""
import warnings
from pathlib import Path

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.trained import agreement_arguments, run_suite, trained_split
from resnetlab.engine.evaluate import EvalModel, int8_model
from resnetlab.engine.runtime import Runtime
from resnetlab.models.fuse import fuse_bn
from resnetlab.models.quantize import activation_reduce_range, default_backend

ARMS = {"int8 auto": None, "int8 7-bit": True, "int8 8-bit": False}  # name -> reduce_range


@torch.no_grad()
def predictions(model, batches) -> torch.Tensor:
    return torch.cat([model(x).argmax(1) for x, _ in batches])


def main():
    args = agreement_arguments(__doc__, Path(__file__).parent / "results" / "int8_agreement.json")
    trained = trained_split(args.run, args.split)
    batches, labels = trained.batches, trained.labels
    scored = EvalModel(trained.model, trained.normalizer, Runtime.resolve(device="cpu", precision="fp32", channels_last="false"))
    fp32 = predictions(fuse_bn(trained.model), batches)
    rows = [{"arm": "fp32", "top1": 100 * (fp32 == labels).float().mean().item(), "agreement": 100.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's note that 8 bits may saturate without VNNI: measured here
        for arm, reduce_range in ARMS.items():
            pred = predictions(int8_model(scored, trained.train, trained.cfg.data, reduce_range=reduce_range), batches)
            rows.append({"arm": arm, "top1": 100 * (pred == labels).float().mean().item(),
                         "agreement": 100 * (pred == fp32).float().mean().item()})
    backend = default_backend()
    result = {"checkpoint": str(trained.path), "split": args.split, "n": len(labels), "backend": backend,
              "auto_activation_bits": 7 if activation_reduce_range(backend) else 8,
              "machine": describe_machine("cpu"), "results": rows}
    for row in rows:
        print(f"{row['arm']:<12} top-1 {row['top1']:6.2f}%   agreement with fp32 {row['agreement']:6.2f}%")
    print(f"(auto = {result['auto_activation_bits']}-bit activations on this CPU, backend {backend}, n={len(labels)})")
    write_json(result, args.out)


if __name__ == "__main__":
    run_suite(main)
