#!/usr/bin/env bash
# The GPU results of record, in parts that each fit one 10-minute call on a lent GPU machine.
#
#   bash benchmarks/gpu_run.sh check DATA OUT   # CUDA tests, a ResNet-18 smoke run, ResNet-20 training speed
#   bash benchmarks/gpu_run.sh accuracy DATA OUT  # time to 80% (ResNet-20); 91% and 94% (ResNet-18)
#   bash benchmarks/gpu_run.sh resnet50 DATA OUT  # ResNet-50 training and inference speed
#
# DATA is a cifar10-jpeg root (DATA/train, DATA/test); OUT receives the JSON results and runs.tgz
# (the run directories without their checkpoints: config, metrics.jsonl, summary.json).
# Each step has its own time limit, so one that hangs cannot take the others' time.
set -u
part=$1 data=$2 out=$3
runs=${RUNS:-/tmp/resnetlab-gpu-runs}
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1
trap 'tar czf "$out/runs.tgz" --exclude="*.pt" -C "$runs" .' EXIT

step() {  # step LIMIT_S CMD...: run, log, go on whatever happens
  local limit=$1; shift
  echo "== $(date -u +%T) $* (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "== rc $?"
}

bench=(python3 -m resnetlab bench --device cuda --data "$data")

case $part in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    step 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine_runtime.py
    step 120 python3 -m resnetlab train --recipe cifar10_resnet18 --data "$data" --out "$runs/resnet18-smoke" \
      --max-steps 200 --set train.eval_every=100
    step 180 "${bench[@]}" --model resnet20 --batch-size 512 --images 4096 --reps 20 \
      --variant fp32 --variant bf16-cl --variant bf16-cl-default --json "$out/train_resnet20_cuda.json"
    ;;
  accuracy)
    tta=(python3 benchmarks/time_to_accuracy.py --data "$data" --workdir "$runs" --out "$out")
    step 180 "${tta[@]}" --target 80 --arms resnetlab paper-eager-fp32 --paper-steps 6000
    # one 60-epoch run aimed at 94%: its curve says when it passed 91%
    step 200 "${tta[@]}" --target 94 --arms resnet18
    for run in "$runs"/*/resnet18; do
      step 60 python3 -m resnetlab eval "$run" --protocol 10crop --json
    done
    ;;
  resnet50)
    step 230 "${bench[@]}" --model resnet50 --batch-size 128 --images 1024 --reps 10 \
      --variant fp32 --variant bf16-cl --variant bf16-cl-default --json "$out/train_resnet50_cuda.json"
    step 150 "${bench[@]}" --model resnet50 --task infer --batch-size 32 --images 1024 --reps 20 \
      --variant fp32 --variant fp16-cl --variant bf16-cl --json "$out/infer_resnet50_cuda.json"
    ;;
  *)
    echo "unknown part $part: choose check, accuracy or resnet50" >&2
    exit 2
    ;;
esac
