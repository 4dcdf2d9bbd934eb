"""Data pipeline throughput (images/s), written to benchmarks/results/data_<date>.json.

    python benchmarks/bench_data.py [--cifar-jpeg /work/shared/data/cifar10-jpeg] [--large 384]

1. CIFAR in memory with augmentation (pad 4, random crop, flip): the training loader, batch 128.
2. The cifar10-jpeg folder: build_data with an empty cache (decode every JPEG once) + one epoch,
   then build_data again (served from the .npz cache) + one epoch.
3. A folder of larger JPEGs (made here, in a temp dir, ImageNet-like sizes) at 224 px: scale
   augmentation training batches with 0 and 2 workers, and centre-crop evaluation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch

from resnetlab.bench.machine import describe_machine
from resnetlab.bench.pipeline import cifar_folder, cifar_memory, large_jpeg_folder
from resnetlab.config import DataConfig
from resnetlab.files import write_text_atomic

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """This suite's machine record (its keys predate describe_machine; kept so old files compare)."""
    m = describe_machine("cuda" if torch.cuda.is_available() else "cpu")
    return {"cpu": m["cpu"], "cores": m["cpu_cores"], "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
            "torch": m["torch"], "torch_threads": m["torch_threads"], "python": m["python"], "gpu": m.get("gpu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-jpeg", default="/work/shared/data/cifar10-jpeg", help="cifar10-jpeg folder ('' skips)")
    parser.add_argument("--large", type=int, default=384, help="number of large JPEGs to make (0 skips)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "command": "python benchmarks/bench_data.py"}
    memory_cfg = (DataConfig(dataset="folder", root=args.cifar_jpeg, val_size=0) if args.cifar_jpeg
                  else DataConfig(dataset="synthetic", synthetic_size=50000, val_size=0))
    if args.cifar_jpeg:
        results["cifar10_jpeg_folder"] = cifar_folder(args.cifar_jpeg)
    results["cifar_memory_augment"] = {"source": memory_cfg.dataset, **cifar_memory(memory_cfg)}
    if args.large:
        results["large_jpeg_folder"] = large_jpeg_folder(args.large, args.workers)
    results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    path = write_text_atomic(RESULTS / f"data_{results['date'][:10]}.json", json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
