"""Every candidate inference path against plain fp32 on a whole split: top-1 of each, and how
often each picks the same class as plain fp32 (the auto path must reach 99.5%, inference/fastpath.py).

    python benchmarks/infer_agreement.py runs/cifar10_fast --out benchmarks/results/amx_xeon/infer_agreement_resnet20.json

Paths, all on the CPU from the run's best.pt, as predict builds them: plain fp32 (eager, NCHW,
BN separate: the reference), fp32 with BN folded and channels_last, bf16 channels_last eager,
compiled (the AOTInductor package of the compiled-model cache) in the precision of this CPU's auto
path where that is compiled (fp32 on an AVX2 or Ice Lake CPU), else in bf16, and int8 (calibrated on 256
training images, as `resnetlab eval --precision int8`). For the compiled path also the cosine
similarity of its embeddings with plain fp32's (what `resnetlab embed` writes). The seconds are
one pass over the split on whatever else the machine was doing: not speed figures.
"""
from pathlib import Path

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.run import write_json
from resnetlab.bench.timing import stopwatch
from resnetlab.bench.trained import agreement_arguments, run_suite, trained_split
from resnetlab.engine.evaluate import EvalModel, int8_model
from resnetlab.engine.runtime import Runtime, autocast, prepare_model, to_input
from resnetlab.inference.compile_cache import weights_digest
from resnetlab.inference.fastpath import MIN_AGREEMENT, FastModel, InferencePath, embeddings, path_here
from resnetlab.models.fuse import fuse_bn

CPU = torch.device("cpu")


@torch.no_grad()
def run(model, rt: Runtime, batches, embed: bool = False) -> tuple[torch.Tensor, float]:
    """(argmax classes or embeddings of every image, seconds)."""
    out = []
    with stopwatch() as wall:
        for x, _ in batches:
            with autocast(rt):
                x = to_input(x, rt)
                out.append((embeddings(model, x) if embed else model(x).argmax(1)).float())
    return torch.cat(out), wall.s


def main():
    args = agreement_arguments(__doc__, Path(__file__).parent / "results" / "infer_agreement.json")
    trained = trained_split(args.run, args.split)
    path, name, model, normalizer, cfg = trained.path, trained.model_name, trained.model, trained.normalizer, trained.cfg
    batches, labels = trained.batches, trained.labels
    fp32, cl, bf16 = Runtime(CPU, "fp32", False), Runtime(CPU, "fp32", True), Runtime(CPU, "bf16", True)
    auto = path_here("cpu", "auto", cfg.data.image_size)
    precision = auto.precision if auto.compiled else "bf16"
    crt = Runtime(CPU, precision, True)
    compiled = FastModel(prepare_model(fuse_bn(model), crt), name, InferencePath(precision, True, True),
                         cfg.data.image_size, weights_digest(model))
    paths = {  # label -> (model, runtime)
        "fp32 plain (reference)": (model.eval(), fp32),
        "fp32 folded channels_last": (prepare_model(fuse_bn(model), cl), cl),
        "bf16 channels_last": (prepare_model(fuse_bn(model), bf16), bf16),
        f"{precision} channels_last compiled": (compiled, crt),
        "int8": (int8_model(EvalModel(model, normalizer, fp32), trained.train, cfg.data), fp32),
    }
    compiled(batches[0][0])  # builds or loads the package: not inside the timed pass
    reference, rows = None, []
    for label, (net, rt) in paths.items():
        pred, seconds = run(net, rt, batches)
        reference = pred if reference is None else reference
        rows.append({"path": label, "top1": 100 * (pred == labels).float().mean().item(),
                     "top1_agreement_with_fp32": 100 * (pred == reference).float().mean().item(),
                     "seconds_one_pass": round(seconds, 2)})
        print(f"{label:<30} top-1 {rows[-1]['top1']:6.2f}%   agreement with fp32 {rows[-1]['top1_agreement_with_fp32']:7.2f}%"
              f"   {seconds:6.1f} s", flush=True)
    ref_emb, _ = run(model, fp32, batches, embed=True)
    emb, _ = run(compiled, crt, batches, embed=True)
    cosine = torch.nn.functional.cosine_similarity(emb, ref_emb, dim=1)
    result = {"checkpoint": str(path), "model": name, "split": args.split, "n": len(labels),
              "auto_path_here": auto.label, "min_agreement": MIN_AGREEMENT, "machine": describe_machine("cpu"),
              "results": rows, "compiled_embeddings_cosine_with_fp32": {"min": cosine.min().item(),
                                                                         "mean": cosine.mean().item()}}
    print(f"auto path on this CPU: {auto.label}; compiled {precision} embeddings vs fp32: cosine min "
          f"{cosine.min():.5f}, mean {cosine.mean():.6f} (n={len(labels)})")
    write_json(result, args.out)


if __name__ == "__main__":
    run_suite(main)
