"""Two gloo processes under torchrun match one process on the same global batch.

BatchNorm statistics are per process in DDP (SyncBatchNorm has no CPU kernel), so the check
freezes BatchNorm (finetune.freeze_bn: running statistics used, affine fixed): the network is
then BN-free in effect, and DDP's averaged gradient of two half-batches equals the one-process
gradient of the whole batch. The data split must also be exact: each global batch is dealt out
to the two ranks, so any mistake in sharding changes the weights.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from resnetlab.config import apply_overrides, config_to_dict
from resnetlab.engine import load_checkpoint, train_and_evaluate
from resnetlab.engine.distributed import DistInfo, dist_info_from_env, per_rank_batch
from resnetlab.errors import UserError
from resnetlab.models import create_model
from test_engine_train import tiny_config


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    cfg = tiny_config(("finetune.freeze_bn", True), ("schedule.max_steps", 6), ("train.eval_every", 3),
                      ("optim.lr", 0.05))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "resnetlab",
           "train", "--recipe", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x 8" in done.stderr  # the log says how the global batch is split
    assert done.stdout.count('"steps": 6') == 1  # only rank 0 prints (and writes)

    torch.set_num_threads(1)
    train_and_evaluate(cfg, tmp_path / "one")
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(cfg.train.seed)
    init = create_model("resnet8", num_classes=4).state_dict()
    assert not torch.allclose(init["layer3.0.conv1.weight"], one["layer3.0.conv1.weight"])  # training moved them
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # the test confusion matrix is summed over both processes' shards, like the accuracy counts
    rows = [[int(c) for c in line.split(",")[1:]] for line in (tmp_path / "two" / "confusion_test.csv").read_text().splitlines()[1:]]
    per_class = json.loads((tmp_path / "one" / "summary.json").read_text())["test"]["best"]["per_class"]
    assert [sum(row) for row in rows] == [c["images"] for c in per_class] and sum(map(sum, rows)) == 160


def test_torchrun_variables_and_the_global_batch():
    assert dist_info_from_env({}) == DistInfo()
    info = dist_info_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (1, 4, False, True)
    assert per_rank_batch(256, info) == 64
    with pytest.raises(UserError, match="global batch.*multiple of 4"):
        per_rank_batch(250, info)


def test_sync_bn_on_cpu_is_a_clear_error():
    # A one-process "group" is enough to reach the check; no process group is created for it.
    from resnetlab.engine.runtime import make_runtime
    from resnetlab.engine.setup import _sync_bn

    cfg = apply_overrides(tiny_config(), [("train.sync_bn", True)])
    with pytest.raises(UserError, match="sync_bn needs CUDA"):
        _sync_bn(torch.nn.BatchNorm2d(2), cfg, DistInfo(0, 2, 0), make_runtime(cfg.train))
