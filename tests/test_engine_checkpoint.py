"""Checkpoint files: atomic writes, safe loading, RNG capture."""
import errno
import random

import numpy as np
import pytest
import torch

from resnetlab.engine import checkpoint as ck
from resnetlab.engine.checkpoint import capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from resnetlab.errors import UserError


def stub(step: int) -> dict:
    """The keys every checkpoint must have, with placeholder values."""
    return {"format": ck.FORMAT, **{key: None for key in ck.MODEL_KEYS}, "step": step}


def test_save_is_atomic_and_a_full_disk_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(stub(1), path)
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)  # part of the bytes reach the temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="last.pt .No space left on device.; the previous last.pt is intact"):
        save_checkpoint(stub(2), path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_load_refuses_non_checkpoints_with_clear_errors(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a resnetlab-checkpoint-v1"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="best.pt"):
        checkpoint_path(tmp_path)  # a folder without checkpoints/


def test_run_dir_resolves_to_best_then_last(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert checkpoint_path(tmp_path).name == "last.pt"
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"")
    assert checkpoint_path(tmp_path).name == "best.pt"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
