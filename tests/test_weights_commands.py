"""Every command that takes a checkpoint takes a weights name too, with the weights' own classes and
preprocessing: eval, predict, embed, export, train --init. The files sit in a temporary torch.hub
cache under test entries registered for the test (the real entries' digests are the real files')."""
import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from reference_resnets import akamaster_file
from test_engine_train import tiny_config

from resnetlab.cli import main
from resnetlab.config import config_to_dict
from resnetlab.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from resnetlab.engine import load_checkpoint
from resnetlab.data.datasets import ArrayDataset, match_classes
from resnetlab.engine.sources import load_source
from resnetlab.errors import UserError
from resnetlab.models import create_model, hub, pretrained
from resnetlab.models.layouts import akamaster_orders


def register(monkeypatch, base_name, name, build):
    """A test entry like `base_name`'s for the file `build(path)` writes into the cache."""
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    staging = hub.cache_dir() / "staging"
    result = build(staging)
    sha = hashlib.sha256(staging.read_bytes()).hexdigest()
    base = pretrained.get_weights(base_name)
    entry = replace(base, name=name, urls=(f"https://weights.example/{name}",), filename=f"{name}-{sha[:8]}",
                    hash_prefix=sha[:8], sha256=sha)
    staging.rename(hub.cache_dir() / entry.filename)
    monkeypatch.setitem(pretrained._BY_NAME, name, entry)
    return entry, result


def reference_inputs(images: torch.Tensor) -> torch.Tensor:
    """akamaster's trainer: ToTensor() then Normalize(ImageNet mean, std), at 32 px."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (images.float() / 255 - mean) / std


IMAGES = torch.randint(0, 256, (24, 3, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)


@pytest.fixture
def cifar_weights(tmp_path, monkeypatch):
    """(entry, akamaster reference model): akamaster's layout and preprocessing, CIFAR-10 classes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(hub.MIRROR_ENV, "http://127.0.0.1:9")  # a download would fail, never reach out
    return register(monkeypatch, "resnet20.akamaster_c10", "resnet20.test_c10",
                    lambda path: akamaster_file(path, spread_on=reference_inputs(IMAGES)))


def test_eval_uses_the_weights_classes_and_preprocessing(tmp_path, cifar_weights, capsys, monkeypatch):
    """Every test image is filed under the class the publisher's model predicts for it, so the
    publisher's preprocessing scores exactly 100%; a dataset normaliser would not."""
    entry, reference = cifar_weights
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    with torch.no_grad():
        predicted = reference(reference_inputs(IMAGES)).argmax(1).tolist()
        other = reference((IMAGES.float() / 255 - 0.45) / 0.25).argmax(1).tolist()  # another normaliser's answers
    assert len(set(predicted)) >= 5 and sum(p != o for p, o in zip(predicted, other)) >= 6  # a test that can fail
    root = tmp_path / "data"
    for i, img in enumerate(IMAGES):
        for split, label in (("test", entry.classes[predicted[i]]), ("train", entry.classes[i % 10])):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / split / label / f"{i}.png")
    assert main(["eval", entry.name, "--data", str(root), "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["top1"], report["n"], report["checkpoint"]) == (100.0, 24, entry.name)
    assert main(["eval", entry.name]) == 2
    assert "does not say where its data is; pass --data DIR" in capsys.readouterr().err


def test_the_checkpoint_of_weights_carries_their_preprocessing(cifar_weights):
    entry, _ = cifar_weights
    ckpt, label = load_source(entry.name)
    data = ckpt.config["data"]
    assert label == entry.name and ckpt.classes == entry.classes and ckpt.num_classes == 10
    assert (data["image_size"], data["eval_resize"], data["interpolation"]) == (32, 32, "bilinear")
    assert torch.allclose(ckpt.normalizer["mean"], torch.tensor(IMAGENET_MEAN))
    tv2 = pretrained.get_weights("resnet50.tv2_in1k").preprocess
    a1 = pretrained.get_weights("resnet50.a1_in1k").preprocess
    assert (tv2.resize, tv2.input_size, tv2.interpolation) == (232, 224, "bilinear")
    assert (a1.resize, a1.input_size, a1.interpolation) == (288, 288, "bicubic")


def test_predict_prints_imagenet_class_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def build(path):  # a classifier that always answers class 207 (torchvision's "golden retriever")
        model = create_model("resnet18")
        torch.nn.init.zeros_(model.fc.weight)
        with torch.no_grad():
            model.fc.bias.zero_()[207] = 20.0
        torch.save(model.state_dict(), path)

    entry, _ = register(monkeypatch, "resnet18.tv_in1k", "resnet18.test_in1k", build)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    assert main(["predict", entry.name, str(tmp_path / "photo.jpg"), "--topk", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    top = result["results"][0]["top"]
    assert top[0]["class"] == "golden retriever" and top[0]["index"] == 207 and top[0]["prob"] > 0.99
    assert top[1]["class"] in entry.classes and result["checkpoint"] == entry.name


def test_embed_gives_the_publishers_features_in_resnetlab_channel_order(tmp_path, cifar_weights):
    entry, reference = cifar_weights
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    out = tmp_path / "emb.npy"
    assert main(["embed", entry.name, *(str(tmp_path / f"{i}.png") for i in range(3)), "--out", str(out),
                 "--device", "cpu", "--precision", "fp32"]) == 0
    with torch.no_grad():
        x = reference_inputs(images)
        feats = reference.layer3(reference.layer2(reference.layer1(torch.relu(reference.bn1(reference.conv1(x))))))
        want = feats.mean((2, 3))
    order = akamaster_orders(create_model("resnet20"))["fc.weight"][1]
    torch.testing.assert_close(torch.from_numpy(np.load(out)), want[:, order], rtol=1e-4, atol=1e-4)


def test_export_bakes_the_weights_normaliser(tmp_path, cifar_weights, capsys):
    entry, reference = cifar_weights
    out = tmp_path / "m.pt"
    assert main(["export", entry.name, "--format", "torchscript", "--out", str(out)]) == 0
    assert "checked against PyTorch" in capsys.readouterr().out
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(3)).float()
    with torch.no_grad():
        got = torch.jit.load(str(out))(images)
        want = reference(reference_inputs(images))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_train_init_from_weights_by_name(tmp_path, cifar_weights, capsys):
    entry, _ = cifar_weights
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 2), ("data.image_size", 32)))))
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "--out", str(run), "--init", entry.name,
                 "--set", "model.name=resnet20", "--set", "finetune.freeze_stages=3"]) == 0
    out, err = capsys.readouterr()
    assert f"initialised from {entry.name}; new classifier for 4 classes" in err and "initialised" not in out
    trained = load_checkpoint(run / "checkpoints" / "last.pt").artifact.weights
    published = create_model(entry.name, pretrained=True).state_dict()
    for key in ("conv1.weight", "layer2.0.conv2.weight", "layer3.2.bn2.running_var"):  # frozen: as published
        assert torch.equal(trained[key], published[key])
    assert trained["fc.weight"].shape == (4, 64)
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run2"), "--init", entry.name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetlab train: error: weights resnet20.test_c10 are for resnet20 with 10 classes; "
                          "this model differs in")
    assert err.endswith("To fine-tune them, train resnet20: --set model.name=resnet20") and "\n" not in err


def test_imagenet_folders_may_name_classes_by_wordnet_id():
    entry = pretrained.get_weights("resnet50.tv2_in1k")
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    folder = ArrayDataset(images, torch.tensor([0, 1, 1]), [entry.class_ids[5], entry.classes[2]])  # an id, a name
    matched = match_classes(folder, entry.classes, "the folder", entry.class_ids)
    assert matched.labels.tolist() == [5, 2, 2] and matched.classes == entry.classes
    unknown = ArrayDataset(images, torch.tensor([0, 0, 0]), ["n00000000"])
    with pytest.raises(UserError, match="the folder has 1 class the model does not know: n00000000"):
        match_classes(unknown, entry.classes, "the folder", entry.class_ids)
