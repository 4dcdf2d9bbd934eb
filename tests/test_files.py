"""atomic_write: the target holds the old bytes or the new ones, never a mix, and no temp files linger."""
import builtins
import errno

import pytest

import resnetlab.files
from resnetlab.files import StorageError, atomic_path, atomic_write, check_writable, write_files_atomic, write_text_atomic


def test_writes_bytes_and_text(tmp_path):
    with atomic_write(tmp_path / "sub" / "a.bin") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    write_text_atomic(tmp_path / "b.json", "{\"é\": 1}")
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == "{\"é\": 1}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.json", "sub"]


def test_an_error_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise KeyboardInterrupt  # Ctrl-C while writing
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_files_written_together_are_all_new_or_all_old(tmp_path, monkeypatch):
    """embed's FILE.npy and FILE.names.txt: a full disk at the second left a new .npy beside old names."""
    write_files_atomic({tmp_path / "e.npy": b"new array", tmp_path / "e.names.txt": b"new names"})
    assert (tmp_path / "e.npy").read_bytes() == b"new array" and (tmp_path / "e.names.txt").read_bytes() == b"new names"

    def full_at_names(path, *args, **kwargs):
        if "names" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(resnetlab.files, "open", full_at_names, raising=False)
    with pytest.raises(StorageError, match=r"e\.names\.txt \(No space left on device\); the previous e\.names\.txt is intact"):
        write_files_atomic({tmp_path / "e.npy": b"newer array", tmp_path / "e.names.txt": b"newer names"})
    assert (tmp_path / "e.npy").read_bytes() == b"new array" and (tmp_path / "e.names.txt").read_bytes() == b"new names"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.names.txt", "e.npy"]


def test_a_directory_at_the_path_is_not_writable(tmp_path):
    """bench --json DIR ran the whole benchmark, then failed to rename its results over the folder."""
    (tmp_path / "results.json").mkdir()
    with pytest.raises(StorageError, match=r"results\.json \(Is a directory\); nothing was written there"):
        check_writable(tmp_path / "results.json")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass


@pytest.mark.parametrize("where, reason", [("file/x.bin", "Not a directory"), ("file/deeper/x.bin", "Not a directory"),
                                           ("/proc/x.bin", "No such file or directory")])
def test_check_writable_names_the_path_and_the_reason_and_leaves_nothing(tmp_path, where, reason):
    (tmp_path / "file").write_text("a regular file")
    target = tmp_path / where
    with pytest.raises(StorageError, match=f"could not write {target} \\({reason}\\); nothing was written there"):
        check_writable(target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file"]
    check_writable(tmp_path / "new" / "deeper" / "x.bin")  # writable: folders made for the probe are removed again
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file"]


def test_atomic_path_renames_a_named_write_into_place_or_removes_it(tmp_path):
    with atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"model")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the exporter failed")
    assert (tmp_path / "m.onnx").read_bytes() == b"model" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_a_folder_or_temporary_file_taken_away_mid_write_is_a_storage_error(tmp_path):
    """A run directory deleted while training, or a temporary file removed by another container's
    cleanup, ended the command in FileNotFoundError's traceback (ENOENT was not a storage errno)."""
    import shutil

    folder = tmp_path / "run" / "checkpoints"
    with pytest.raises(StorageError, match=r"could not write .*last\.pt \(its folder was removed while it was "
                                           r"written to\); nothing was written there"):
        with atomic_write(folder / "last.pt") as f:
            f.write(b"weights")
            shutil.rmtree(tmp_path / "run")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.npz").write_bytes(b"old")
    with pytest.raises(StorageError, match=r"\(its temporary file was removed while it was written\); the previous "
                                           r"a\.npz is intact"):
        with atomic_path(tmp_path / "cache" / "a.npz") as tmp:
            tmp.write_bytes(b"new")
            tmp.unlink()
    assert (tmp_path / "cache" / "a.npz").read_bytes() == b"old"
    with pytest.raises(FileNotFoundError):  # the writer's own missing input stays what it is
        with atomic_write(tmp_path / "cache" / "b.txt", "w") as f:
            f.write(open(tmp_path / "missing.txt").read())

    with pytest.raises(StorageError, match=r"metrics\.jsonl \(its folder was removed while it was written to\)"):
        with resnetlab.files.storage_errors(tmp_path / "gone" / "metrics.jsonl"), \
                open(tmp_path / "gone" / "metrics.jsonl", "a"):  # an append between two evaluations
            pass


def test_two_threads_writing_one_file_use_temporaries_of_their_own(tmp_path):
    """The temporary name held only the pid: a thread's atomic write removed, or renamed into place, another
    thread's half-written file. A dead writer's temporaries go whichever form their name has."""
    import threading

    from resnetlab.files import TEMPORARY, remove_stale_temporaries, temporary

    names = []
    worker = threading.Thread(target=lambda: names.append(temporary(tmp_path / "entry.pt2")))
    worker.start()
    worker.join()
    assert temporary(tmp_path / "entry.pt2") != names[0]
    assert all(TEMPORARY.fullmatch(n.name)["name"] == "entry.pt2" for n in (names[0], temporary(tmp_path / "entry.pt2")))
    dead = 2 ** 22 + 7  # above any pid_max this suite meets: no process has it
    old, new = tmp_path / f".a.json.{dead}.tmp", tmp_path / f".b.pt2.{dead}.t{dead}.tmp"
    for path in (old, new):
        path.write_text("cut short")
    assert sorted(remove_stale_temporaries(tmp_path)) == [old, new]


def test_a_write_removes_the_temporaries_of_earlier_writes_of_that_file_killed_midway(tmp_path):
    """kill -9 during an export left a hidden temporary as big as the model for good (240 MB for a
    ResNet-152); the next write of that file removes those whose process is gone and that stood idle,
    and leaves a live writer's, a recent one (another machine's, on a shared folder) and other files'."""
    import os
    import time

    dead, old = 2 ** 22 + 7, time.time() - 3600
    killed = [tmp_path / f".model.onnx.{dead}.tmp", tmp_path / f".model.onnx.{dead}.t{dead}.tmp",
              tmp_path / f"..model.onnx.{dead}.t1.tmp.{dead}.t1.tmp"]  # an export's staged file, written atomically
    kept = [tmp_path / f".model.onnx.{os.getppid()}.t1.tmp", tmp_path / f".other.onnx.{dead}.tmp",
            tmp_path / f".model.onnx.{dead + 1}.tmp"]
    for path in killed + kept:
        path.write_bytes(b"half a model")
        os.utime(path, (old, old) if path != kept[2] else None)  # the last one: written to just now
    write_text_atomic(tmp_path / "model.onnx", "a model")
    assert [p.exists() for p in killed + kept] == [False, False, False, True, True, True]
    assert (tmp_path / "model.onnx").read_text() == "a model"


def test_a_file_replaced_keeps_its_permissions(tmp_path):
    """An export over a `chmod 600` model made it 644: readable by every user of the machine."""
    import stat

    for mode in (0o600, 0o640, 0o755):
        (tmp_path / "model.onnx").write_text("old")
        (tmp_path / "model.onnx").chmod(mode)
        write_text_atomic(tmp_path / "model.onnx", "new")
        assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == mode
    write_text_atomic(tmp_path / "fresh.onnx", "new")
    assert stat.S_IMODE((tmp_path / "fresh.onnx").stat().st_mode) == 0o666 & ~umask()


def umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


def test_embeddings_as_safetensors_are_byte_reproducible(tmp_path):
    """The safetensors writer keeps metadata in a hash map: its keys came in another order from run to run.
    Written sorted, two saves are the same bytes, and the file reads back."""
    import json
    import struct

    import numpy as np

    from resnetlab.inference.embed import load_embeddings, save_embeddings

    emb, names = np.arange(12, dtype=np.float32).reshape(3, 4), ["a.jpg", "b.jpg", "c.jpg"]
    meta = {key: key.upper() for key in ("model", "checkpoint", "layer", "precision", "protocol", "size")}
    for out in ("one.safetensors", "two.safetensors"):
        save_embeddings(tmp_path / out, names, emb, meta)
    blob = (tmp_path / "one.safetensors").read_bytes()
    assert blob == (tmp_path / "two.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    keys = list(json.loads(blob[8:8 + size])["__metadata__"])
    assert keys == sorted(keys) and len(keys) == 7
    got_names, got = load_embeddings(tmp_path / "one.safetensors")
    assert got_names == names and np.array_equal(got, emb)
