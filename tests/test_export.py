"""Exports run outside PyTorch's module and match it: ONNX (onnxruntime), TorchScript, safetensors."""
import json
import os

import pytest
import torch
from PIL import Image
from realdata import CIFAR10_JPEG

from resnetlab.cli import main
from resnetlab.config import Config, apply_overrides
from resnetlab.engine import load_checkpoint, train_and_evaluate
from resnetlab.errors import UserError
from resnetlab.models import create_model, load_weights
from resnetlab.inference.export import ExportCheckFailed, export_checkpoint, export_module
from resnetlab.inference.export_check import verify

CIFAR_TEST = CIFAR10_JPEG / "test" / "cat"
# TorchScript is deprecated upstream (torch 2.13) but supported; its warnings are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("export"))


def train_checkpoint(tmp):
    """A ResNet-8 after 4 steps on synthetic 16 px images (trained BN statistics, pixel-mean normaliser)."""
    cfg = apply_overrides(Config(), [
        ("model.name", "resnet8"), ("data.dataset", "synthetic"), ("data.synthetic_size", 64),
        ("data.synthetic_classes", 4), ("data.val_size", 0), ("data.augment", "none"), ("data.image_size", 16),
        ("optim.batch_size", 16), ("schedule.kind", "constant"), ("schedule.max_steps", 4),
        ("train.precision", "fp32"), ("train.device", "cpu")])
    train_and_evaluate(cfg, tmp / "run")
    return tmp / "run" / "checkpoints" / "last.pt"


def test_baked_normaliser_equals_the_checkpoint_pipeline(ckpt_path):
    from resnetlab.engine import model_from_checkpoint

    module, _ = export_module(ckpt_path, fuse=False)
    model, normalizer, _, _ = model_from_checkpoint(ckpt_path)
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(module(x.float()), model(normalizer(x)), rtol=1e-5, atol=1e-5)


def test_torchscript_matches_pytorch_at_any_batch(ckpt_path, tmp_path):
    report = export_checkpoint(ckpt_path, "torchscript", tmp_path / "m.pt", dynamic_batch=True)
    assert set(report["max_abs_diff"]) == {"random batch 1", "random batch 5"}
    assert all(d < 1e-3 for d in report["max_abs_diff"].values())
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    reference, _ = export_module(ckpt_path, fuse=False)
    x = torch.rand(7, 3, 16, 16) * 255
    torch.testing.assert_close(loaded(x), reference(x), rtol=1e-4, atol=1e-4)


def test_onnx_with_dynamic_batch_matches_pytorch(ckpt_path, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    export_checkpoint(ckpt_path, "onnx", tmp_path / "m.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_inputs()[0].shape[1:] == [3, 16, 16]
    reference, _ = export_module(ckpt_path, fuse=False)
    for batch in (1, 3, 8):
        x = torch.rand(batch, 3, 16, 16) * 255
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, reference(x).detach(), rtol=1e-4, atol=1e-4)


def test_a_wrong_export_fails_the_check(ckpt_path, tmp_path):
    other = torch.jit.trace(export_module(ckpt_path)[0].eval(), torch.rand(1, 3, 16, 16) * 255)
    with torch.no_grad():
        other.model.fc.bias.add_(1.0)  # a different model written where the export should be
    other.save(str(tmp_path / "wrong.pt"))
    with pytest.raises(ExportCheckFailed, match="differ"):
        verify("torchscript", tmp_path / "wrong.pt", ckpt_path, {"x": torch.rand(2, 3, 16, 16) * 255})


def test_safetensors_weights_load_with_load_weights(ckpt_path, tmp_path):
    from safetensors import safe_open

    export_checkpoint(ckpt_path, "safetensors", tmp_path / "w.safetensors")
    model = create_model("resnet8", num_classes=4)
    load_weights(model, str(tmp_path / "w.safetensors"))
    saved = load_checkpoint(ckpt_path).artifact.weights
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["resnetlab"])
    assert meta["model_name"] == "resnet8" and meta["input_size"] == 16 and len(meta["classes"]) == 4


@pytest.mark.skipif(not CIFAR_TEST.is_dir(), reason="real CIFAR-10 JPEGs not available")
def test_cli_checks_real_images_and_rejects_bad_arguments(ckpt_path, tmp_path, capsys):
    images = sorted(CIFAR_TEST.iterdir())[:6]
    code = main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--images", *map(str, images), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["max_abs_diff"]["6 real images"] < 1e-3
    assert main(["export", str(ckpt_path), "--format", "onnx", "--out", str(tmp_path / "m.pt")]) == 2
    with pytest.raises(UserError, match="format"):
        export_checkpoint(ckpt_path, "tflite", tmp_path / "m.tflite")


def test_onnx_carries_classes_input_size_and_preprocessing(ckpt_path, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    report = export_checkpoint(ckpt_path, "onnx", tmp_path / "m.onnx")  # the check reads the metadata back
    model = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    ckpt = load_checkpoint(ckpt_path)
    assert props["classes"] == list(ckpt.artifact.classes) == ["class0", "class1", "class2", "class3"]
    assert props["input_size"] == 16 and props["model_name"] == "resnet8" and props["normalizer"]["kind"] == "pixel"
    pre = props["preprocessing"]
    assert {k: pre[k] for k in ("color", "resize", "resize_side", "interpolation", "crop", "crop_kind", "layout",
                                "dtype", "value_range")} == {
        "color": "RGB", "resize": 16, "resize_side": "shorter", "interpolation": "bilinear, antialiased", "crop": 16,
        "crop_kind": "center", "layout": "NCHW", "dtype": "float32", "value_range": [0, 255]}
    assert pre["small_images"]["max_side"] == 64 and pre["small_images"]["then_resize_to"] == 16
    assert pre["exif_orientation"].startswith("applied")  # followed literally in test_export_preprocessing.py
    assert "float32 (B, 3, 16, 16)" in model.doc_string and report["metadata"] == props
    assert props["eval_resize"] == props["preprocessing"]["resize"] == 16  # not the config's unused 256


def test_torchscript_carries_metadata_and_a_wrong_one_fails_the_check(ckpt_path, tmp_path):
    from resnetlab.inference.export import TORCHSCRIPT_META
    from resnetlab.inference.export_meta import metadata
    from resnetlab.inference.export_check import read_metadata, verify_metadata

    export_checkpoint(ckpt_path, "torchscript", tmp_path / "m.pt")
    ckpt = load_checkpoint(ckpt_path).artifact
    assert read_metadata("torchscript", tmp_path / "m.pt") == json.loads(json.dumps(metadata(ckpt)))
    traced = torch.jit.load(str(tmp_path / "m.pt"))
    wrong = {**metadata(ckpt), "classes": ["a", "b", "c", "d"]}
    traced.save(str(tmp_path / "wrong.pt"), _extra_files={TORCHSCRIPT_META: json.dumps(wrong)})
    with pytest.raises(ExportCheckFailed, match="metadata classes"):
        verify_metadata("torchscript", tmp_path / "wrong.pt", ckpt)


@pytest.mark.parametrize("dataset, augment, model, resize", [
    ("folder", "imagenet", "resnet50", 256),  # scale-augmented training: evaluated at the shorter side 256
    ("folder", "none", "resnet50", 224),  # trained on whole images resized to 224
    ("cifar10", "cifar", "resnet20", 224),  # in-memory CIFAR: never resized to eval_resize
])
def test_preprocessing_follows_predicts_geometry(dataset, augment, model, resize):
    from resnetlab.engine.records import Artifact
    from resnetlab.inference.export_meta import preprocessing

    ckpt = Artifact(config={"data": {"dataset": dataset, "augment": augment}}, input_size=224, eval_resize=256,
                    model_name=model, model_kwargs={}, num_classes=10, classes=[], normalizer=None, weights={})
    assert (preprocessing(ckpt)["resize"], preprocessing(ckpt)["crop"]) == (resize, 224)


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.pt"), ("safetensors", "m.safetensors")])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(ckpt_path, tmp_path, capsys, monkeypatch, fmt,
                                                                      name):
    import resnetlab.inference.export as export

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(export, "export_module", lambda *a: pytest.fail("exported before checking --out"))
    for out, reason in ((tmp_path / "file" / name, "Not a directory"), (f"/proc/{name}", "No such file or directory")):
        assert main(["export", str(ckpt_path), "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"resnetlab export: error: could not write {out} ({reason}); nothing was written there\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_safetensors_export_follows_the_umask(ckpt_path, tmp_path):
    old = os.umask(0o022)
    try:
        export_checkpoint(ckpt_path, "safetensors", tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_a_torchscript_export_or_a_plain_pickle_given_as_weights_is_one_line_without_torch_warnings(
        ckpt_path, tmp_path, capsys):
    import pickle
    import warnings

    from PIL import Image

    export_checkpoint(ckpt_path, "torchscript", tmp_path / "m.pt")
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "a.png")]) == 2
        with pytest.raises(UserError, match="m.pt is a TorchScript export, not a checkpoint: load it with torch.jit"):
            load_weights(create_model("resnet8", num_classes=4), str(tmp_path / "m.pt"))
        with pytest.raises(UserError, match="x.pt"):
            load_weights(create_model("resnet8", num_classes=4), str(tmp_path / "x.pt"))
        assert main(["predict", str(tmp_path / "x.pt"), str(tmp_path / "a.png")]) == 2
    assert [str(w.message) for w in shown if not str(w.message).startswith("`torch.jit")] == []  # no torch warnings
    err = capsys.readouterr().err
    assert f"resnetlab predict: error: {tmp_path / 'm.pt'} is a TorchScript export, not a checkpoint" in err
    assert "weights_only" not in err and "corrupt" not in err and len(err.splitlines()) == 2


def test_cli_names_unreadable_images_on_stderr_and_exports_nothing_when_none_reads(ckpt_path, tmp_path, capsys):
    """They were one count on stdout ("no real images checked"), and the export was written unchecked."""
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_text("not an image")
    out = tmp_path / "m.pt"
    for images, what in (([tmp_path / "a.jpg"], "the image given could not be read"),
                         ([tmp_path / "a.jpg", tmp_path / "b.jpg"], "none of the 2 images could be read")):
        assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out),
                     "--images", *map(str, images)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            *(f"resnetlab export: warning: skipped {p}: not an image Pillow can read" for p in images),
            f"resnetlab export: error: {what}; nothing was exported"]
        assert not out.exists()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "c.png")
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out), "--images",
                 str(tmp_path / "a.jpg"), str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr()
    assert printed.err == f"resnetlab export: warning: skipped {tmp_path / 'a.jpg'}: not an image Pillow can read\n"
    assert "checked against PyTorch on 1 real image: max abs diff" in printed.out and out.is_file()
    out.unlink()  # --json lists the unreadable file as predict does (it said only what was checked)
    assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out), "--json", "--images",
                 str(tmp_path / "a.jpg"), str(tmp_path / "c.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == [{"file": str(tmp_path / "a.jpg"), "error": "not an image Pillow can read"}]
    assert "1 real image" in report["max_abs_diff"]


def test_a_failed_check_is_said_on_stderr_and_keeps_stdout_clean(ckpt_path, tmp_path, capsys, monkeypatch):
    import resnetlab.inference.export as export_lib

    def differs(checkpoint, fmt, out, *rest):
        (tmp_path / "m.pt").write_bytes(b"written, then checked")
        raise ExportCheckFailed(f"{out}: outputs differ from PyTorch by 0.5 on random batch 1")

    monkeypatch.setattr(export_lib, "export_checkpoint", differs)
    for json_flag in ([], ["--json"]):
        (tmp_path / "m.pt").unlink(missing_ok=True)  # the fake's bytes are no export: the next --out would refuse them
        assert main(["export", str(ckpt_path), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                     *json_flag]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == [
            f"resnetlab export: check FAILED: {tmp_path / 'm.pt'}: outputs differ from PyTorch by 0.5 on random batch 1"]


@pytest.mark.parametrize("command", ["predict", "embed", "export"])
def test_help_says_what_each_exit_status_means(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 " in text and "; 1 " in text and "; 2 an error" in text and "stderr" in text


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.pt"), ("safetensors", "m.safetensors")])
def test_two_exports_of_one_checkpoint_are_byte_identical(ckpt_path, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    import subprocess
    import sys

    blobs = []
    for attempt in range(3 if fmt == "safetensors" else 2):  # the safetensors writer's key order: 1 in 2
        out = tmp_path / str(attempt) / name  # one file name: a TorchScript archive holds it
        # each in its own process, as a pipeline runs them (torch.jit renames a class traced twice in one process)
        subprocess.run([sys.executable, "-m", "resnetlab", "export", str(ckpt_path), "--format", fmt, "--out",
                        str(out)], check=True, capture_output=True)
        blobs.append(out.read_bytes())
    assert all(blob == blobs[0] for blob in blobs)
    if fmt == "safetensors":  # still the file safetensors and load_weights read, digest checked
        assert "resnetlab" in json.loads(blobs[0][8:8 + int.from_bytes(blobs[0][:8], "little")])["__metadata__"]
        load_weights(create_model("resnet8", num_classes=4), tmp_path / "0" / name)
