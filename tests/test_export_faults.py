"""An export that fails or is interrupted leaves whatever was at --out as it was (it was replaced
before the check ran); onnxruntime that does not load, or fails on the file, is one line; torch's
exporter no longer turns a Ctrl-C into a paragraph of its own error."""
import sys
import zipfile

import pytest
from test_export import train_checkpoint

import resnetlab.inference.export_check as export_check
from resnetlab.cli import main
from resnetlab.inference.export import _interruption_in


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("export_faults"))


def previous_export(fmt: str, path) -> bytes:
    """A small file that passes for an earlier resnetlab export of `fmt` at `path` (an --out holding
    anything else is refused); returns its bytes."""
    if fmt == "torchscript":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("m/extra/resnetlab.json", "{}")
    else:
        onnx = pytest.importorskip("onnx")
        model = onnx.helper.make_model(onnx.helper.make_graph([], "previous", [], []))
        onnx.helper.set_model_props(model, {key: "{}" for key in ("model_name", "classes", "preprocessing", "normalizer")})
        onnx.save(model, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, MemoryError])
def test_an_export_stopped_in_its_check_keeps_the_previous_file(ckpt_path, tmp_path, monkeypatch, capsys, stop):
    out = tmp_path / "m.pt"
    before = previous_export("torchscript", out)

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(export_check, "verify", stopped)
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == (
        130 if stop is KeyboardInterrupt else 2)
    assert capsys.readouterr().err == ("resnetlab export: interrupted\n" if stop is KeyboardInterrupt else
                                       "resnetlab export: error: out of memory; lower --batch-size or --image-size (or "
                                       "the number of images at once), or use a machine with more memory\n")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def _fake_onnxruntime(monkeypatch, folder, source: str):
    (folder / "onnxruntime").mkdir(parents=True)
    (folder / "onnxruntime" / "__init__.py").write_text(source)
    pytest.importorskip("onnxruntime")  # imported for real first, so that the fake is replaced by it again after
    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.syspath_prepend(str(folder))


def test_an_onnxruntime_that_does_not_load_is_one_line_before_any_work(ckpt_path, tmp_path, monkeypatch, capsys):
    _fake_onnxruntime(monkeypatch, tmp_path / "fake", 'raise OSError("libonnxruntime.so: cannot open shared object")')
    out = tmp_path / "m.onnx"
    before = previous_export("onnx", out)
    assert main(["export", str(ckpt_path), "--format", "onnx", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("resnetlab export: error: onnxruntime could not be loaded (OSError: "
                                       "libonnxruntime.so: cannot open shared object); reinstall it: pip install "
                                       "--force-reinstall onnxruntime\n")
    assert out.read_bytes() == before


def test_an_onnxruntime_that_fails_on_the_file_is_a_failed_check(ckpt_path, tmp_path, monkeypatch, capsys):
    _fake_onnxruntime(monkeypatch, tmp_path / "fake", "class InferenceSession:\n    def __init__(self, *a, **k):\n"
                                                      "        raise RuntimeError('[ONNXRuntimeError] : 10 : INVALID_GRAPH')\n")
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt_path), "--format", "onnx", "--out", str(out)]) == 1
    failed = tmp_path / "m.failed.onnx"
    assert capsys.readouterr().err == (f"resnetlab export: check FAILED: onnxruntime could not run {failed} "
                                       f"([ONNXRuntimeError] : 10 : INVALID_GRAPH); the failed export is left at "
                                       f"{failed} to inspect, not to use; nothing was written at {out}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "m.failed.onnx"]


@pytest.mark.parametrize("previous", [True, False])
def test_a_failed_check_keeps_the_previous_export_and_leaves_the_failed_one_beside_it(ckpt_path, tmp_path, monkeypatch,
                                                                                     capsys, previous):
    out, failed = tmp_path / "prod.pt", tmp_path / "prod.failed.pt"
    before = previous_export("torchscript", out) if previous else None
    monkeypatch.setattr(export_check, "RTOL", 0.0)  # any rounding difference fails: an exporter that drifts
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    kept = f"the previous {out.name} is intact" if previous else f"nothing was written at {out}"
    assert err.startswith(f"resnetlab export: check FAILED: {failed}: outputs differ from PyTorch")
    assert err.endswith(f"; the failed export is left at {failed} to inspect, not to use; {kept}\n")
    assert err.count("\n") == 1 and failed.stat().st_size > 10_000  # the whole failed export, to inspect
    assert (out.read_bytes() == before) if previous else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.failed.pt"] + (["prod.pt"] if previous else [])


def test_an_interruption_wrapped_in_the_exporters_own_error_is_found():
    """torch.onnx.export: KeyboardInterrupt -> AttributeError (a half-done lazy import) -> TorchExportError."""
    try:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")
        except AttributeError as err:
            raise RuntimeError("Failed to export the model with torch.export") from err
    except RuntimeError as err:
        assert isinstance(_interruption_in(err), KeyboardInterrupt)
    assert _interruption_in(RuntimeError("a real failure")) is None


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 1310720000 bytes. Error code 12 (Cannot allocate memory)"), " (an allocation of 1.22 GiB failed)"),
    (MemoryError("Unable to allocate 447. GiB for an array with shape (16, 100000, 100000, 3)"),
     " (an allocation of 447 GiB failed)"),
])
def test_out_of_memory_in_any_command_is_one_line(monkeypatch, capsys, error, said):
    """torch's allocator failure was a paragraph of C++ under a traceback (bench, export, predict ...)."""
    import resnetlab.cli.models as models_command

    def fails(args):
        raise error

    monkeypatch.setattr(models_command, "run", fails)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == (f"resnetlab models: error: out of memory{said}; lower --batch-size or "
                                       "--image-size (or the number of images at once), or use a machine with more "
                                       "memory\n")


@pytest.mark.parametrize("fmt, name", [("onnx", "an ONNX"), ("torchscript", "a TorchScript"), ("safetensors", "a safetensors")])
def test_a_wrong_suffix_names_the_format_as_written(tmp_path, fmt, name):
    from resnetlab.errors import UserError, command_line
    from resnetlab.inference.export import SUFFIXES, check_out

    with pytest.raises(UserError) as err:
        check_out(fmt, tmp_path / "m.txt")
    assert str(err.value) == f"out {tmp_path / 'm.txt'}: {name} export should end in {SUFFIXES[fmt]}"  # "a onnx export"
    with pytest.raises(UserError) as err, command_line():  # as `resnetlab export` says it
        check_out(fmt, tmp_path / "m.txt")
    assert str(err.value) == f"--out {tmp_path / 'm.txt'}: {name} export should end in {SUFFIXES[fmt]}"


def test_dynamic_batch_for_a_safetensors_export_is_refused(ckpt_path, tmp_path, capsys):
    """It was taken and did nothing: weights have no batch size."""
    assert main(["export", str(ckpt_path), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"),
                 "--dynamic-batch"]) == 2
    assert capsys.readouterr().err == ("resnetlab export: error: --dynamic-batch is for ONNX exports (TorchScript "
                                       "takes any batch already); a safetensors export holds weights, with no batch "
                                       "size\n")
    assert not (tmp_path / "m.safetensors").exists()


def test_without_onnx_an_earlier_onnx_export_at_out_is_the_missing_extra_not_a_foreign_file(ckpt_path, tmp_path,
                                                                                           monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    before = previous_export("onnx", out)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError, as without the export extra
    assert main(["export", str(ckpt_path), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab export: error: ONNX export needs the export extra: pip install 'resnetlab[export]'")
    assert "is not an ONNX export written by resnetlab" not in err and out.read_bytes() == before


def test_an_export_over_a_private_model_keeps_it_private_and_removes_what_a_killed_export_left(ckpt_path, tmp_path):
    """export stages its file itself (not through files.atomic_path): a chmod 600 model came back 644, and
    the staged file a `kill -9` left (its own temporary, as big as the model) stayed for good."""
    import os
    import stat
    import time

    out, dead = tmp_path / "m.safetensors", 2 ** 22 + 7
    assert main(["export", str(ckpt_path), "--format", "safetensors", "--out", str(out)]) == 0
    out.chmod(0o600)
    left = tmp_path / f"..m.safetensors.{dead}.t1.tmp.{dead}.t1.tmp"
    left.write_bytes(b"half a model")
    os.utime(left, (time.time() - 3600,) * 2)
    assert main(["export", str(ckpt_path), "--format", "safetensors", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and not left.exists()
