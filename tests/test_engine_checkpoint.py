"""Checkpoint files: atomic writes, safe loading, RNG capture."""
import errno
import os
import random
import struct
import zipfile

import numpy as np
import pytest
import torch

from resnetlab.engine import checkpoint as ck
from resnetlab.engine.finetune import load_init_weights
from resnetlab.engine.records import Artifact, Checkpoint, LoopState, TrainingState
from resnetlab.engine.run_records import MetricsRow
from resnetlab.engine.checkpoint import capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from resnetlab.errors import UserError
from resnetlab.files import StorageError
from resnetlab.models import create_model


def stub(step: int) -> Checkpoint:
    """A checkpoint with real weights and placeholders where a test needs nothing."""
    artifact = Artifact(weights=create_model("resnet8", num_classes=2).state_dict(), model_name="resnet8",
                        model_kwargs={}, num_classes=2, classes=["a", "b"], normalizer=None, config=None)
    return Checkpoint(artifact, TrainingState(loop=LoopState(step=step), epoch=0, optimizer={}, rng={},
                                              last_metrics=MetricsRow(step=step)))


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
    assert load_checkpoint(path).training.step == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_load_refuses_non_checkpoints_with_clear_errors(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a resnetlab-checkpoint-v1"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(UserError, match=r"junk.pt is not a resnetlab checkpoint: not a file torch.save wrote "
                                        r"\(it starts with b'not '\)$"):
        load_checkpoint(tmp_path / "junk.pt")  # torch.load's own error here is "list index out of range"
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pt is not a resnetlab checkpoint: not a file torch.save wrote "
                                        r"\(it is empty\)$"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(stub(3), tmp_path / "whole.pt")
    for size in (50_000, 1_000):  # torch says "[Errno 22] Invalid argument", or a paragraph on miniz
        (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:size])
        with pytest.raises(UserError, match=r"cut.pt is not a readable resnetlab checkpoint \(the file is cut short or "
                                            r"damaged\)$"):
            load_checkpoint(tmp_path / "cut.pt")
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


def test_a_torch_writer_failure_is_a_storage_error(tmp_path, monkeypatch):
    def short_write(obj, f):  # what torch.save raises when a write comes up short without an OSError
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\nframe #0 ...")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(StorageError) as err:
        save_checkpoint(stub(1), tmp_path / "last.pt")
    assert str(err.value) == (f"could not write {tmp_path / 'last.pt'} (the write failed: [enforce fail at "
                              "inline_container.cc:672] . unexpected pos 704 vs 598); nothing was written there")
    assert not list(tmp_path.iterdir())


def test_a_second_ctrl_c_inside_the_write_is_an_interruption_not_a_disk_error(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised in the writer torch.save calls came out as "unexpected pos": a false disk error."""
    save_checkpoint(stub(1), tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    class SecondCtrlC:  # the file torch.save's writer writes to; the signal lands in its third write
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.f.write(data)

    init = ck._WriteAll.__init__
    monkeypatch.setattr(ck._WriteAll, "__init__", lambda self, f: init(self, SecondCtrlC(f)))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(stub(2), tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def flip(path, offset: int, to):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    to.write_bytes(data)
    return to


def weight_bytes(path) -> range:
    """Where the largest tensor's bytes lie in a torch zip file (stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    start = info.header_offset + 30 + name_len + extra_len
    return range(start, start + info.file_size)


def test_a_flipped_bit_in_the_weights_is_refused_naming_the_file(tmp_path):
    save_checkpoint(stub(3), tmp_path / "good.pt")
    weights = weight_bytes(tmp_path / "good.pt")
    bad = flip(tmp_path / "good.pt", weights[len(weights) // 2], tmp_path / "bad.pt")
    assert torch.load(bad, weights_only=True)["step"] == 3  # torch itself reads it without a word
    with pytest.raises(UserError) as err:
        load_checkpoint(bad)
    assert str(err.value) == (f"{bad} is damaged: its contents do not match the SHA-256 digest written with it "
                              "(bits flipped on disk or in a copy, or the file was edited); use an intact copy")


def test_a_damaged_checkpoint_is_refused_as_fine_tuning_weights_too(tmp_path):
    save_checkpoint(stub(3), tmp_path / "good.pt")
    weights = weight_bytes(tmp_path / "good.pt")
    bad = flip(tmp_path / "good.pt", weights[len(weights) // 2], tmp_path / "bad.pt")
    with pytest.raises(UserError, match=f"{bad} is damaged"):
        load_init_weights(create_model("resnet8", num_classes=2), str(bad))
    assert load_init_weights(create_model("resnet8", num_classes=2), str(tmp_path / "good.pt")).skipped == []


def test_a_flip_anywhere_is_refused_in_one_line_or_changes_nothing(tmp_path):
    save_checkpoint(stub(3), tmp_path / "good.pt")
    good = load_checkpoint(tmp_path / "good.pt")
    size = (tmp_path / "good.pt").stat().st_size
    refused = 0
    for offset in range(0, size, size // 97):  # zip headers, the pickle, tensor bytes, the central directory
        bad = flip(tmp_path / "good.pt", offset, tmp_path / "bad.pt")
        try:
            loaded = load_checkpoint(bad)
        except UserError as err:
            assert str(bad) in str(err) and "\n" not in str(err), (offset, str(err))
            refused += 1
            continue
        same = ck.payload_digest(loaded.to_dict()) == ck.payload_digest(good.to_dict())
        assert loaded.digest == good.digest and same, offset  # padding: same contents
    assert refused > 80


def test_checkpoints_from_before_the_digest_still_load(tmp_path):
    save_checkpoint(stub(5), tmp_path / "new.pt")
    old = load_checkpoint(tmp_path / "new.pt").to_dict()
    assert "digest" not in old
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").training.step == 5


def test_nan_weights_in_a_checkpoint_without_a_digest_are_refused_naming_the_file(tmp_path):
    """An edited file (its digest removed) with a NaN weight: predict printed NaN probabilities."""
    save_checkpoint(stub(5), tmp_path / "new.pt")
    edited = load_checkpoint(tmp_path / "new.pt").to_dict()
    edited["model"]["layer1.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    edited["model"]["fc.bias"][1] = float("-inf")
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "edited.pt")
    assert str(err.value) == (f"{tmp_path / 'edited.pt'} holds NaN or infinite values (layer1.0.conv2.weight, fc.bias): "
                              "weights of a diverged run or a damaged file; choose other weights")


@pytest.mark.parametrize("classes, said", [(["a"], "1 class names"), (["a", "b", "c"], "3 class names"),
                                           (["a", 7], "2 class names, not all of them strings")])
def test_class_names_that_do_not_match_the_outputs_are_refused_naming_the_file(tmp_path, classes, said):
    """An edited file (no digest) with one class name for two outputs: predict failed with an IndexError."""
    save_checkpoint(stub(5), tmp_path / "new.pt")
    edited = {k: v for k, v in load_checkpoint(tmp_path / "new.pt").to_dict().items() if k != "digest"}
    torch.save({**edited, "classes": classes}, tmp_path / "edited.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "edited.pt")
    assert str(err.value) == f"{tmp_path / 'edited.pt'}: {said} for num_classes=2: an edited or damaged checkpoint"


class RunsCode:
    def __reduce__(self):
        return os.system, (f"touch {RunsCode.marker}",)


def test_a_checkpoint_with_code_in_it_runs_nothing_and_says_so_in_our_words(tmp_path):
    RunsCode.marker = tmp_path / "ran"
    torch.save({"format": ck.FORMAT, "model": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert str(err.value) == (f"{tmp_path / 'evil.pt'} holds Python objects besides tensors and plain containers; "
                              "resnetlab does not unpickle those (that can run code from the file), and it is not a "
                              "resnetlab checkpoint")
    assert not RunsCode.marker.exists()
