"""predict: same labels as evaluation on real CIFAR-10 JPEGs, batched. The same claims, bad files and
exit codes are checked without the real data in test_predict_synthetic.py."""
import json
import os
from pathlib import Path

import pytest
import torch
from realdata import CIFAR10_JPEG

from resnetlab.cli import main
from resnetlab.config import Config, apply_overrides
from resnetlab.data import build_data
from resnetlab.engine import (
    evaluate_checkpoint,
    model_from_checkpoint,
    train_and_evaluate,
)
from resnetlab.errors import UserError
from resnetlab.inference.inputs import collect_images
from resnetlab.inference.predictor import Predictor, predict_files, top1_agreement

CIFAR_JPEG = CIFAR10_JPEG
CLASSES = ("airplane", "cat", "ship")
pytestmark = pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="real CIFAR-10 JPEGs not available")


def real_subset(root: Path, n_train: int, n_test: int, offset: int = 0) -> Path:
    """ROOT/{train,test}/<class>/ symlinks to the first real images of three classes."""
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(CIFAR_JPEG / split / cls))[offset:offset + n]:
                (root / split / cls / name).symlink_to(CIFAR_JPEG / split / cls / name)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A ResNet-8 trained for 6 steps on 3 x 64 real images: a few seconds."""
    tmp = tmp_path_factory.mktemp("predict")
    data = real_subset(tmp / "data", 64, 20)
    cfg = apply_overrides(Config(), [
        ("model.name", "resnet8"), ("data.dataset", "folder"), ("data.root", str(data)), ("data.val_size", 0),
        ("data.cache_dir", str(tmp / "cache")), ("optim.batch_size", 32), ("optim.lr", 0.05),
        ("schedule.kind", "constant"), ("schedule.max_steps", 6), ("train.precision", "fp32"), ("train.device", "cpu")])
    train_and_evaluate(cfg, tmp / "run")
    return tmp / "run"


def test_predict_gives_the_labels_evaluation_scores(run_dir):
    test_dir = run_dir.parent / "data" / "test"
    paths = collect_images([str(test_dir)])
    assert len(paths) == 60 and paths == sorted(paths)
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    results, failed = predict_files(predictor, paths, topk=2, batch_size=7)  # batches cross class folders
    assert failed == [] and [r["file"] for r in results] == paths

    # The reference: the checkpoint's model on the dataset the engine builds, no BN folding.
    model, normalizer, classes, cfg = model_from_checkpoint(run_dir / "checkpoints" / "last.pt")
    test = build_data(cfg.data, seed=cfg.train.seed).test
    with torch.no_grad():
        expected = model(normalizer(test.images)).argmax(1)
    assert [r["top"][0]["index"] for r in results] == expected.tolist()
    assert [r["top"][0]["class"] for r in results] == [classes[i] for i in expected.tolist()]

    report = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="fp32")
    truth = [Path(p).parent.name for p in paths]
    accuracy = 100.0 * sum(r["top"][0]["class"] == t for r, t in zip(results, truth)) / len(paths)
    assert accuracy == pytest.approx(report["top1"])
    assert all(r["top"][0]["prob"] >= r["top"][1]["prob"] for r in results)


def test_ten_crop_matches_evaluation(run_dir):
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    paths = collect_images([str(run_dir.parent / "data" / "test")])
    results, _ = predict_files(predictor, paths, topk=1, protocol="10crop")
    truth = [Path(p).parent.name for p in paths]
    report = evaluate_checkpoint(run_dir, split="test", protocol="10crop", device="cpu", precision="fp32")
    accuracy = 100.0 * sum(r["top"][0]["class"] == t for r, t in zip(results, truth)) / len(paths)
    assert accuracy == pytest.approx(report["top1"])


def test_bf16_fast_path_agrees_with_fp32(run_dir):
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="bf16", channels_last="true")
    check = top1_agreement(predictor, collect_images([str(run_dir.parent / "data" / "test")]))
    assert check["n"] == 60 and check["top1_agreement"] >= 90.0 and check["max_abs_prob_diff"] < 0.1


def test_int8_predictor_is_calibrated_on_real_images_and_tracks_fp32(run_dir, capsys):
    test_dir = str(run_dir.parent / "data" / "test")
    fp32 = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    int8 = fp32.quantized(collect_images([str(run_dir.parent / "data" / "train")]), images=48)
    assert int8.precision == "int8" and fp32.precision == "fp32" and not fp32.int8  # a copy; fp32 unchanged
    check = top1_agreement(int8, collect_images([test_dir]))
    assert check["n"] == 60 and check["precision"] == "int8"
    assert check["top1_agreement"] >= 90.0 and check["max_abs_prob_diff"] < 0.15
    with pytest.raises(UserError, match="fp32 model"):
        int8.embeddings([torch.zeros(1, 3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(UserError, match="fp32 predictor on the CPU"):
        int8.quantized([test_dir])

    assert main(["predict", str(run_dir), test_dir, "--precision", "int8", "--calibrate",
                 str(run_dir.parent / "data" / "train"), "--verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and out["verify"]["precision"] == "int8" and len(out["results"]) == 60
    assert main(["predict", str(run_dir), test_dir, "--calibrate", test_dir]) == 2
    assert "--calibrate is for --precision int8" in capsys.readouterr().err


def test_int8_evaluation_scores_close_to_fp32(run_dir):
    fp32 = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="fp32")
    int8 = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="int8")
    assert int8["precision"] == "int8" and fp32["precision"] == "fp32" and int8["n"] == fp32["n"] == 60
    assert abs(int8["top1"] - fp32["top1"]) <= 100 * 4 / 60  # at most 4 of the 60 images change class


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_embed_writes_one_named_row_per_image(run_dir, tmp_path, suffix):
    from resnetlab.inference.embed import load_embeddings
    from resnetlab.models.features import embed

    test_dir = run_dir.parent / "data" / "test"
    assert main(["embed", str(run_dir), str(test_dir), "--out", str(tmp_path / f"emb{suffix}"), "--precision", "fp32"]) == 0
    names, emb = load_embeddings(tmp_path / f"emb{suffix}")
    assert names == collect_images([str(test_dir)]) and emb.shape == (60, 64) and emb.dtype == "float32"
    model, normalizer, _, cfg = model_from_checkpoint(run_dir / "checkpoints" / "last.pt")
    with torch.no_grad():
        expected = embed(model, normalizer(build_data(cfg.data, seed=cfg.train.seed).test.images))
    torch.testing.assert_close(torch.from_numpy(emb), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["e.npy", "e.safetensors"])
def test_embed_to_a_place_that_cannot_be_written_fails_before_reading_images(run_dir, tmp_path, capsys, monkeypatch,
                                                                               name):
    import resnetlab.inference.embed as embed_module

    monkeypatch.setattr(embed_module, "embed_files", lambda *a: pytest.fail("embedded before checking --out"))
    (tmp_path / "file").write_text("not a folder")
    for out, reason in ((tmp_path / "file" / name, "Not a directory"), (f"/proc/{name}", "No such file or directory")):
        assert main(["embed", str(run_dir), str(run_dir.parent / "data" / "test"), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"resnetlab embed: error: could not write {out} ({reason}); nothing was written there\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_large_images_use_the_eval_resize_and_centre_crop_of_evaluation(tmp_path):
    """A net trained on a folder of large images: predict = the checkpoint's model on eval views."""
    from PIL import Image

    from resnetlab.data import LoaderSpec, make_eval_loader

    for split, n in (("train", 6), ("test", 3)):
        for cls in CLASSES:
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(CIFAR_JPEG / split / cls))[:n]:
                with Image.open(CIFAR_JPEG / split / cls / name) as img:  # 32 px -> 90x72: "large" images
                    img.resize((90, 72)).save(tmp_path / "data" / split / cls / (name[:-4] + ".png"))
    cfg = apply_overrides(Config(), [
        ("model.name", "resnet18"), ("data.dataset", "folder"), ("data.root", str(tmp_path / "data")),
        ("data.val_size", 0), ("data.augment", "imagenet"), ("data.image_size", 48), ("data.eval_resize", 56),
        ("data.scale_min", 56), ("data.scale_max", 64), ("data.normalize", "channel"), ("optim.batch_size", 9),
        ("schedule.kind", "constant"), ("schedule.max_steps", 1), ("train.precision", "fp32"), ("train.device", "cpu")])
    train_and_evaluate(cfg, tmp_path / "run")
    paths = collect_images([str(tmp_path / "data" / "test")])
    results, failed = predict_files(Predictor.from_checkpoint(tmp_path / "run", device="cpu"), paths, topk=3)
    model, normalizer, _, cfg = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    test = build_data(cfg.data, seed=cfg.train.seed).test
    views = torch.cat([v[0] for v, _ in make_eval_loader(test, cfg.data, LoaderSpec(4))])
    assert views.shape == (9, 3, 48, 48) and failed == []
    with torch.no_grad():
        expected = model(normalizer(views)).softmax(1)
    for r, p in zip(results, expected):
        assert [t["index"] for t in r["top"]] == p.topk(3).indices.tolist()
        assert r["top"][0]["prob"] == pytest.approx(p.max().item(), abs=1e-4)


@pytest.mark.parametrize("precision, also", [("int8", "--precision int8 --calibrate"), ("bogus", "")])
def test_load_refuses_an_unknown_precision_in_one_line_naming_the_choices(tmp_path, precision, also):
    import resnetlab

    with pytest.raises(UserError) as err:
        resnetlab.load(tmp_path, precision=precision)  # checked before the checkpoint is read
    assert f"precision {precision!r}: choose one of auto, fp32, bf16, fp16." in str(err.value)
    assert also in str(err.value) and "\n" not in str(err.value)


def test_predict_prints_each_batch_as_it_is_done_and_a_ctrl_c_keeps_those_lines(run_dir, monkeypatch, capsys):
    test_dir = run_dir.parent / "data" / "test"
    paths = collect_images([str(test_dir)])
    assert main(["predict", str(run_dir), str(test_dir), "--batch-size", "8", "--topk", "1", "--device", "cpu",
                 "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == paths
    probs, calls = Predictor.probs, []

    def interrupted_at_the_third_batch(self, views):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return probs(self, views)
    monkeypatch.setattr(Predictor, "probs", interrupted_at_the_third_batch)
    assert main(["predict", str(run_dir), str(test_dir), "--batch-size", "8", "--topk", "1", "--device", "cpu",
                 "--precision", "fp32"]) == 130
    out, err = capsys.readouterr()
    assert out.splitlines() == lines[:16] and err == "resnetlab predict: interrupted\n"


def test_a_topk_above_the_number_of_classes_lists_every_class_and_says_so(run_dir, capsys):
    image = collect_images([str(run_dir.parent / "data" / "test")])[0]
    classes = len(Predictor.from_checkpoint(run_dir, device="cpu").classes)
    assert main(["predict", str(run_dir), image, "--topk", "2000", "--device", "cpu", "--precision", "fp32"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split("  ")) == 1 + classes
    assert err == (f"resnetlab predict: --topk 2000: the model has {classes} classes; each image lists every one\n")
    assert main(["predict", str(run_dir), image, "--device", "cpu", "--precision", "fp32"]) == 0  # the default 5
    out, err = capsys.readouterr()
    assert len(out.split("  ")) == 1 + min(5, classes) and err == ""
