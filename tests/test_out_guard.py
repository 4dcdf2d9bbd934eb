"""`export` and `embed` replace only what resnetlab wrote at --out before (or an empty file): a
checkpoint copied out of its run, another tool's model or a user's own array at that name was
replaced, as cp would. A symbolic link at --out is written through and stays a link."""
import shutil

import numpy as np
import pytest
from test_export import train_checkpoint

from resnetlab.cli import main
from resnetlab.inference.out_guard import is_ours


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("out_guard"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("out_guard_images")
    for name, colour in (("a.png", (200, 30, 30)), ("b.png", (30, 30, 200))):
        Image.new("RGB", (16, 16), colour).save(folder / name)
    return folder / "a.png"


def _refused(capsys, out, said: str):
    err = capsys.readouterr().err
    assert err == (f"resnetlab {said}: error: --out {out} already exists and is not " + {
        "export": "a TorchScript export", "embed": "an embeddings file"}[said] +
        " written by resnetlab; it would be replaced. Remove it first or choose another --out\n")


def test_an_export_over_a_file_it_did_not_write_is_refused(ckpt_path, tmp_path, capsys):
    out = tmp_path / "model.pt"
    shutil.copyfile(ckpt_path, out)  # the user's own copy of a checkpoint, outside any run
    before = out.read_bytes()
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == 2
    _refused(capsys, out, "export")
    assert out.read_bytes() == before


def test_an_export_replaces_its_own_earlier_file_and_writes_through_a_link(ckpt_path, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.touch()  # an empty file holds nothing: taken
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == 0
    assert is_ours("torchscript", out)
    first = out.stat().st_ino
    link = tmp_path / "current.pt"
    link.symlink_to(out)
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(link)]) == 0  # an earlier export
    assert link.is_symlink() and out.stat().st_ino != first and is_ours("torchscript", out)  # the target was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.pt", "model.pt"]
    capsys.readouterr()


def test_embed_replaces_only_its_own_files(ckpt_path, image, tmp_path, capsys):
    npy, names = tmp_path / "e.npy", tmp_path / "e.names.txt"
    np.save(npy, np.zeros((5, 3), np.float32))  # the user's own array, no names beside it
    assert main(["embed", str(ckpt_path), str(image), "--out", str(npy)]) == 2
    _refused(capsys, npy, "embed")
    npy.unlink()
    names.write_text("notes of the user\n")  # a names file alone is not an embedding's either
    assert main(["embed", str(ckpt_path), str(image), "--out", str(npy)]) == 2
    assert "e.names.txt already exists and is not the names file of embeddings" in capsys.readouterr().err
    assert names.read_text() == "notes of the user\n" and not npy.exists()
    names.unlink()
    for _ in range(2):  # the second embed replaces the pair the first one wrote
        assert main(["embed", str(ckpt_path), str(image.parent), "--out", str(npy)]) == 0
        assert np.load(npy).shape[0] == 2 and names.read_text().count("\n") == 2
    st = tmp_path / "e.safetensors"
    st.write_bytes(b"not safetensors")
    assert main(["embed", str(ckpt_path), str(image), "--out", str(st)]) == 2
    _refused(capsys, st, "embed")
    st.unlink()
    for _ in range(2):
        assert main(["embed", str(ckpt_path), str(image), "--out", str(st)]) == 0
    assert is_ours("embeddings.safetensors", st) and not is_ours("safetensors", st)  # not an export either


def test_the_checks_read_without_loading(tmp_path):
    """A pickled object array in a .npy and a zip without our metadata are judged from their headers
    and names alone."""
    npy = tmp_path / "o.npy"
    np.save(npy, np.array([[object()]], dtype=object), allow_pickle=True)
    (tmp_path / "o.names.txt").write_text("x\n")
    assert is_ours("embeddings.npy", npy)  # a 1x1 array beside one name: the shape is all that is read
    (tmp_path / "o.names.txt").write_text("x\ny\n")
    assert not is_ours("embeddings.npy", npy) and not is_ours("embeddings.names.txt", tmp_path / "o.names.txt")
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.pt", "w") as archive:
        archive.writestr("z/data.pkl", b"\x80\x04N.")
    assert not is_ours("torchscript", tmp_path / "z.pt") and not is_ours("onnx", tmp_path / "z.pt")


def test_only_the_outputs_a_user_names_are_written_through_a_link(ckpt_path, image, tmp_path, capsys):
    """Every write followed links for a while: a run copied with `cp -as` and resumed wrote its
    checkpoints, config and summary into the original run."""
    from resnetlab.files import atomic_write

    original = tmp_path / "original.txt"
    original.write_text("the original run's file")
    copy = tmp_path / "copy.txt"
    copy.symlink_to(original)
    with atomic_write(copy, "w") as f:  # a run's own file: the link is replaced, the original kept
        f.write("the copy's own file")
    assert original.read_text() == "the original run's file" and not copy.is_symlink()
    target = tmp_path / "kept" / "e.safetensors"
    target.parent.mkdir()
    assert main(["embed", str(ckpt_path), str(image), "--out", str(target)]) == 0
    link = tmp_path / "e.safetensors"
    link.symlink_to(target)
    before = target.stat().st_ino
    assert main(["embed", str(ckpt_path), str(image.parent), "--out", str(link)]) == 0  # named by the user: through
    assert link.is_symlink() and target.stat().st_ino != before and f"-> {link}" in capsys.readouterr().out
