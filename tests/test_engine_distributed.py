"""Two gloo processes under torchrun match one process on the same global batch, augmented alike.

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
import threading
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from resnetlab.config import apply_overrides, config_to_dict
from resnetlab.engine import load_checkpoint, train_and_evaluate
from resnetlab.engine.distributed import DistInfo, dist_info_from_env, per_rank_batch, wait_for_exit
from resnetlab.errors import UserError
from resnetlab.models import create_model
from test_engine_train import tiny_config


# Augmentation on: each sample's crop and flip follow it to whichever process trains it.
CFG = tiny_config(("finetune.freeze_bn", True), ("data.augment", "cifar"), ("schedule.max_steps", 6),
                  ("train.eval_every", 3), ("optim.lr", 0.05))
KILLPOINTS = Path(__file__).with_name("killpoints.py")


def torchrun(*args, restarts: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", *map(str, args)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """(recipe file, the run directory of CFG trained by two gloo processes under torchrun)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(CFG)))
    done = torchrun("-m", "resnetlab", "train", "--recipe", root / "cfg.yaml", "--out", root / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x 8" in done.stderr  # the log says how the global batch is split
    assert done.stdout.count('"steps": 6') == 1  # only rank 0 prints (and writes)
    return root / "cfg.yaml", root / "two"


def test_two_processes_match_one_on_the_same_global_batch(tmp_path, two_process_run):
    torch.set_num_threads(1)
    train_and_evaluate(CFG, tmp_path / "one")
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt").artifact.weights
    two = load_checkpoint(two_process_run[1] / "checkpoints" / "last.pt").artifact.weights
    torch.manual_seed(CFG.train.seed)
    init = create_model("resnet8", num_classes=4).state_dict()
    assert not torch.allclose(init["layer3.0.conv1.weight"], one["layer3.0.conv1.weight"])  # training moved them
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # the test confusion matrix is summed over both processes' shards, like the accuracy counts
    rows = [[int(c) for c in line.split(",")[1:]] for line in (two_process_run[1] / "confusion_test.csv").read_text().splitlines()[1:]]
    per_class = json.loads((tmp_path / "one" / "summary.json").read_text())["test"]["best"]["per_class"]
    assert [sum(row) for row in rows] == [c["images"] for c in per_class] and sum(map(sum, rows)) == 160


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_the_job_ends_as_if_never_killed(tmp_path, two_process_run):
    """torchrun --max-restarts=1 reruns the same command; --resume-if-exists makes it continue the run."""
    recipe, unkilled = two_process_run
    # rank 1 dies by SIGKILL before its 5th step (last.pt is from step 3), on the first attempt only
    done = torchrun(KILLPOINTS, "step", 5, "--rank", 1, "--first-attempt", "--", "train", "--recipe", recipe,
                    "--out", tmp_path / "run", "--resume-if-exists", restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at step 3" in done.stderr and done.stdout.count('"steps": 6') == 1
    # rank 0, stopped by torchrun while it waited on the killed rank, said only "terminated" (now: "terminated;
    # the last checkpoint, RUN/checkpoints/last.pt, is kept", or the stop line if the signal finds it between steps)
    assert f"Continue with: torchrun --nproc_per_node=2 -m resnetlab train --resume {tmp_path / 'run'}\n" in done.stderr
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(unkilled / "checkpoints" / "last.pt")
    assert a.training.step == 6 and all(torch.equal(a.artifact.weights[k], b.artifact.weights[k]) for k in b.artifact.weights)
    assert not list((tmp_path / "run").rglob("*.tmp"))


@pytest.mark.slow
def test_a_run_stopped_between_evaluations_logs_the_same_training_numbers_after_resume(tmp_path, two_process_run):
    """The interval's loss and error sums in the checkpoint were rank 0's own, restored on every rank and
    summed again: the first row after a resume differed (and counted too many images across a change of
    the number of processes)."""
    recipe, unkilled = two_process_run
    def one_process(run):
        # Batches and augmentation are the same for any number of processes and BatchNorm is frozen: nothing to
        # warn about, and the job ends as the unbroken two-process run did (up to the order of float sums).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_and_evaluate(CFG, run, resume=True)
        assert not [w for w in caught if "processes" in str(w.message)]
        ended, unbroken = (load_checkpoint(r / "checkpoints" / "last.pt").artifact.weights for r in (run, unkilled))
        for key in unbroken:
            torch.testing.assert_close(ended[key], unbroken[key], rtol=1e-4, atol=1e-5, msg=key)

    for name, signalled, resume in (("two", 0, lambda run: torchrun("-m", "resnetlab", "train", "--resume", run)),
                                    ("one", 1, one_process)):
        # Ctrl-C to one process before step 5: both stop after it, between the evaluations at steps 3 and 6
        run = tmp_path / name
        stopped = torchrun(KILLPOINTS, "step", 5, "--send", "INT", "--rank", signalled, "--slow-exit-rank", 1, "--",
                           "train", "--recipe", recipe, "--out", run)
        assert "stopped by SIGINT at step 5" in stopped.stderr, stopped.stderr[-3000:]  # (whichever rank got it)
        # rank 1 stopped with it and ended cleanly, and rank 0 waited for it to end: torchrun SIGTERMs the processes
        # still running when one fails, and reports them as failed too (rank 1 ending slower than rank 0, now and then)
        assert "<NO_OTHER_FAILURES>" in stopped.stderr, stopped.stderr[-3000:]  # (torchrun itself exits 1)
        assert "rank      : 0 (local_rank: 0)" in stopped.stderr
        assert f"Continue with: torchrun --nproc_per_node=2 -m resnetlab train --resume {run}\n" in stopped.stderr
        done = resume(run)
        assert getattr(done, "returncode", 0) == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        expected = [json.loads(line) for line in (unkilled / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in expected] == [3, 6]
        for key in ("train_loss", "train_err"):
            assert rows[1][key] == pytest.approx(expected[1][key], rel=1e-4), (name, key)


def test_waiting_for_processes_to_end_returns_when_they_have_or_at_the_deadline():
    quick, slow = (subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s})"]) for s in (0.5, 60))
    try:
        reaper = threading.Thread(target=quick.wait)  # as torchrun reaps its processes
        reaper.start()
        wait_for_exit((quick.pid,), timeout_s=30)
        with pytest.raises(ProcessLookupError):  # ended and reaped (the reaper may not have stored its status yet)
            os.kill(quick.pid, 0)
        reaper.join(timeout=30)
        assert quick.returncode == 0
        wait_for_exit((slow.pid,), timeout_s=0.3)  # one that does not end is waited for no longer than asked
        assert slow.poll() is None
    finally:
        slow.kill(), slow.wait(), reaper.join()


def test_torchrun_variables_and_the_global_batch():
    assert dist_info_from_env({}) == DistInfo()
    dist_info = dist_info_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (dist_info.rank, dist_info.world_size, dist_info.is_main, dist_info.enabled) == (1, 4, False, True)
    assert per_rank_batch(256, dist_info) == 64
    with pytest.raises(UserError, match="global batch.*multiple of 4"):
        per_rank_batch(250, dist_info)


def test_a_change_in_the_number_of_processes_matters_only_to_what_is_computed_per_process():
    from resnetlab.config import FinetuneConfig
    from resnetlab.engine.finetune import apply_freezing
    from resnetlab.engine.setup import _per_process

    cfg = tiny_config()
    assert _per_process(create_model("resnet8", num_classes=4), [], cfg) == ["BatchNorm statistics are per process"]
    assert _per_process(create_model("resnet8", num_classes=4), [], apply_overrides(cfg, [("train.sync_bn", True)])) == []
    model = create_model("resnet8", num_classes=4)
    eval_bns = apply_freezing(model, FinetuneConfig(freeze_bn=True))
    assert _per_process(model, eval_bns, cfg) == []
    frozen = [("finetune.freeze_bn", True)]
    assert _per_process(model, eval_bns, apply_overrides(cfg, frozen + [("data.balance", "loss")])) == [
        "the class-weighted loss (data.balance=loss) is averaged per process"]
    assert _per_process(model, eval_bns, apply_overrides(cfg, frozen + [("data.skip_bad", True)])) == [
        "a batch that lost unreadable files (data.skip_bad) weighs its images per process"]
    model = create_model("resnet8", num_classes=4)  # a frozen stem alone leaves the stages' BatchNorms training
    assert _per_process(model, apply_freezing(model, FinetuneConfig(freeze_stages=0)), cfg)


def test_sync_bn_on_cpu_is_a_clear_error():
    # A one-process "group" is enough to reach the check; no process group is created for it.
    from resnetlab.engine.runtime import make_runtime
    from resnetlab.engine.setup import _sync_bn

    cfg = apply_overrides(tiny_config(), [("train.sync_bn", True)])
    with pytest.raises(UserError, match="sync_bn needs CUDA"):
        _sync_bn(torch.nn.BatchNorm2d(2), cfg, DistInfo(0, 2, 0), make_runtime(cfg.train))


def test_files_met_unreadable_by_any_process_are_listed_in_data_json(tmp_path):
    """Each process decodes only its own share of the photos: rank 1's unreadable files were warned
    about on rank 1 and never reached the data.json rank 0 writes."""
    import numpy as np
    from PIL import Image

    root, rng = tmp_path / "photos", np.random.default_rng(0)
    cut = []
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(8):
                path = root / split / name / f"{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
                if i % 3 == 0:  # header whole, scan data cut short: met only as it is decoded
                    path.write_bytes(path.read_bytes()[:700])
                    cut.append(str(path))
    cfg = apply_overrides(tiny_config(), [("data.dataset", "folder"), ("data.root", str(root)), ("data.val_size", 0),
                                          ("data.normalize", "imagenet"), ("data.skip_bad", True),
                                          ("data.augment", "none"), ("schedule.max_steps", 2)])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    done = torchrun("-m", "resnetlab", "train", "--recipe", tmp_path / "cfg.yaml", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads((tmp_path / "run" / "data.json").read_text())["skipped_files"]
    assert sorted(s["path"] for s in listed) == sorted(cut)  # one epoch (16 per step) and the test split: all met


def test_weights_not_finite_on_one_process_stop_every_process(tmp_path, two_process_run):
    """BatchNorm's running statistics are each process's own: when only rank 1's became NaN/inf, it
    stopped alone and rank 0 waited for it in the next collective for ever."""
    recipe, _ = two_process_run
    done = torchrun(KILLPOINTS, "nonfinite", 1, "--rank", 1, "--slow-exit-rank", 1, "--", "train", "--recipe", recipe,
                    "--out", tmp_path / "run")
    assert done.returncode != 0
    # every process stops; rank 0 alone says why and fails, once the others have ended cleanly (each printed it, and
    # torchrun SIGTERMed the one still running when the other exited: "terminated", and a second failure reported)
    assert done.stderr.count("the weights became NaN/inf by step 3; kept the last good checkpoint") == 1, \
        done.stderr[-3000:]
    assert "<NO_OTHER_FAILURES>" in done.stderr and "rank      : 0 (local_rank: 0)" in done.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
