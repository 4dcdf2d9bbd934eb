"""The registry of published weights: one contract over every entry, name resolution, bad names."""
import json
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import UserError, create_model
from resnetlab.cli import main
from resnetlab.data.decode import load_images
from resnetlab.models import count_params
from resnetlab.models.pretrained import (DATASET_CLASSES, default_weights, get_weights, list_weights,
                                         weights_for)

ENTRIES = list_weights()


def test_the_issue_s_weights_are_all_there():
    names = {w.name for w in ENTRIES}
    for depth in (18, 34, 50, 101, 152):
        assert f"resnet{depth}.tv_in1k" in names
    for depth in (50, 101, 152):  # torchvision's second generation exists for these only
        assert f"resnet{depth}.tv2_in1k" in names
    for depth in (20, 32, 44, 56, 110, 1202):
        assert f"resnet{depth}.akamaster_c10" in names
    for depth in (20, 32, 44, 56):
        assert {f"resnet{depth}.chenyaofo_c10", f"resnet{depth}.chenyaofo_c100"} <= names
    assert {"resnet50.a1_in1k", "resnet50.a2_in1k", "resnet50.a3_in1k"} <= names


@pytest.mark.parametrize("entry", ENTRIES, ids=[w.name for w in ENTRIES])
def test_contract(entry):
    model_name, tag = entry.name.split(".")
    assert model_name == entry.model and tag == entry.tag and re.fullmatch(r"[a-z0-9_]+", tag)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = create_model(entry.model, num_classes=entry.num_classes, **entry.kwargs)
    assert model.fc.out_features == entry.num_classes == len(entry.classes) == len(set(entry.classes))
    if entry.num_params is not None:  # the publisher's count is the architecture's
        assert count_params(model) == entry.num_params
    if entry.class_ids is not None:
        assert len(entry.class_ids) == entry.num_classes and entry.class_ids == sorted(entry.class_ids)
    for url in entry.urls:
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.netloc and parts.path
        stem = PurePosixPath(parts.path).stem
        suffix = re.search(r"-([0-9a-f]{8,})$", stem)
        if suffix:  # a hash the file name carries is the entry's, as torch.hub checks it
            assert suffix.group(1) == entry.hash_prefix
    assert entry.hash_prefix is None or entry.hash_prefix in entry.filename
    if entry.sha256 is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.sha256.startswith(entry.hash_prefix)
    assert entry.file_format in ("torch", "safetensors") and entry.layout in ("torchvision", "timm", "akamaster",
                                                                             "chenyaofo")
    assert entry.filename.endswith(".safetensors") == (entry.file_format == "safetensors")
    pre = entry.preprocess
    assert pre.interpolation in ("bilinear", "bicubic") and pre.resize >= pre.input_size > 0
    assert len(pre.mean) == len(pre.std) == 3 and all(0 < s < 1 for s in pre.std) and pre.channels == "RGB"
    assert entry.top1 is None or 0 < entry.top1 < 100
    assert entry.publisher and entry.license and entry.source.startswith("https://") and entry.accuracy_note


def test_names_and_cache_files_are_unique():
    assert len({w.name for w in ENTRIES}) == len({w.filename for w in ENTRIES}) == len(ENTRIES)


def test_class_files_are_the_datasets():
    imagenet = get_weights("resnet50.tv2_in1k").classes
    assert (imagenet[0], imagenet[1], imagenet[207], imagenet[999]) == ("tench", "goldfish", "golden retriever",
                                                                        "toilet tissue")
    assert get_weights("resnet50.tv2_in1k").class_ids[:2] == ["n01440764", "n01443537"]
    assert get_weights("resnet20.akamaster_c10").classes == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                             "frog", "horse", "ship", "truck"]
    c100 = get_weights("resnet20.chenyaofo_c100").classes
    assert c100 == sorted(c100) and c100[:3] == ["apple", "aquarium_fish", "baby"] and set(DATASET_CLASSES) == {
        "imagenet-1k", "cifar10", "cifar100"}


def test_published_facts_as_recorded():
    tv2 = get_weights("resnet50.tv2_in1k")
    assert tv2.urls == ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth",)
    assert (tv2.top1, tv2.preprocess.resize, tv2.preprocess.input_size) == (80.858, 232, 224)
    a1 = get_weights("resnet50.a1_in1k")
    assert a1.urls == ("https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors",)
    assert (a1.preprocess.interpolation, a1.preprocess.input_size, a1.preprocess.resize) == ("bicubic", 288, 288)
    assert get_weights("resnet50.a3_in1k").sha256 is None  # not found: left unknown, never invented
    assert get_weights("resnet20.chenyaofo_c10").kwargs == {"shortcut": "B"}
    assert get_weights("resnet56.akamaster_c10").top1 == 93.39


def test_resolution_by_tag_name_and_default():
    assert weights_for("resnet50", "tv2_in1k").name == "resnet50.tv2_in1k"
    assert weights_for("resnet50", "resnet50.a1_in1k").name == "resnet50.a1_in1k"
    assert default_weights("resnet50").name == "resnet50.tv2_in1k"
    model = create_model("resnet20.chenyaofo_c100")  # the architecture of those weights, not loaded
    assert model.fc.out_features == 100 and model.layer2[0].downsample is not None


def test_bad_names_give_one_clear_line():
    with pytest.raises(UserError, match=r"unknown weights 'resnet50\.tv3'; did you mean .*resnet50\.tv_in1k"):
        get_weights("resnet50.tv3")
    with pytest.raises(UserError, match=r"unknown weights 'Resnet50\.TV2_IN1K'; did you mean resnet50\.tv2_in1k, "):
        get_weights("Resnet50.TV2_IN1K")  # the name in other capitals comes first
    with pytest.raises(UserError, match=r"weights 'resnet50\.a1_in1k' are for resnet50, not resnet18; weights for "
                                        r"resnet18: tv_in1k"):
        create_model("resnet18", weights="a1_in1k")
    with pytest.raises(UserError, match="no published weights for 'plain20'"):
        create_model("plain20", pretrained=True)
    with pytest.raises(UserError, match=r"trained with shortcut='B', not 'A'"):
        create_model("resnet20", weights="chenyaofo_c10", shortcut="A")
    with pytest.raises(UserError, match="unknown weights 'resnet20.nope'"):
        create_model("resnet20.nope")


def test_cli_list_json_and_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["weights", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [w.name for w in ENTRIES]
    assert all({"name", "model", "url", "top1", "size_mb", "cached", "num_classes"} <= set(r) for r in rows)
    assert not any(r["cached"] for r in rows) and rows[0]["file"].startswith(str(tmp_path))
    assert main(["weights", "list", "--model", "resnet56"]) == 0
    out = capsys.readouterr().out
    assert "resnet56.akamaster_c10" in out and "resnet50" not in out and "93.39" in out


def test_cli_list_flags_a_cached_file_whose_size_is_not_the_published_one(capsys, tmp_path, monkeypatch):
    """A truncated download placed by hand was listed as cached, like a good one. Sizes are in MB
    (10^6 bytes) throughout: torchvision publishes MiB, 44.661 for resnet18's 46,830,571 bytes."""
    from resnetlab.models import hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = get_weights("resnet18.tv_in1k")
    assert entry.file_size_mb == 46.83  # 44.661 MiB
    path = hub.cached_file(entry)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(46_830_571)  # the published file's size: listed as cached
    assert main(["weights", "list", "--model", "resnet18"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("46.8MB  yes")
    with open(path, "wb") as f:
        f.truncate(20_000_000)
    assert main(["weights", "list", "--model", "resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("20.0MB  DAMAGED?") and lines[2] == (
        "resnet18.tv_in1k: the cached file's size is not the published one; `resnetlab weights verify` re-hashes it, "
        "`resnetlab weights fetch NAME` replaces a damaged one")
    assert main(["weights", "list", "--json", "--model", "resnet18"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["size_as_published"] is False
    unsized = get_weights("resnet20.akamaster_c10")  # no size published: an empty file was listed "yes"
    assert unsized.file_size_mb is None
    hub.cached_file(unsized).write_bytes(b"")
    assert main(["weights", "list", "--model", "resnet20"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("0.0MB  DAMAGED?")


def test_bicubic_decoding_is_pillow_s(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    got, failed = load_images([str(tmp_path / "x.png")], 16, 20, "bicubic")
    img = Image.open(tmp_path / "x.png").convert("RGB")  # shorter side 40 -> 20, centre 16 x 16
    want = np.array(img.resize((16, 16), Image.BICUBIC, box=(14.0, 4.0, 46.0, 36.0)))
    assert not failed and np.array_equal(got[0].permute(1, 2, 0).numpy(), want)
    with pytest.raises(UserError, match="unknown data.interpolation 'nearest'"):
        load_images([str(tmp_path / "x.png")], 16, 20, "nearest")
