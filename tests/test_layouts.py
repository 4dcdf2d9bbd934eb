"""Third-party layouts load exactly: files built by reference implementations of each publisher's
architecture (tests/reference_resnets.py), with random weights and BN statistics, give the
publisher's outputs; a layout without an exact mapping is refused."""
import pytest
import torch
from reference_resnets import ImageNetResNet50, akamaster_file, assert_same_outputs, chenyaofo_file, randomise_bn
from safetensors.torch import save_file

from resnetlab import UserError, create_model, load_weights
from resnetlab.models.resnet import cifar_resnet


# ---------------------------------------------------------------- akamaster/pytorch_resnet_cifar10

@pytest.mark.parametrize("depth,legacy", [(20, False), (32, True)])
def test_akamaster_file_loads_to_the_publishers_outputs(tmp_path, depth, legacy):
    reference = akamaster_file(tmp_path / "w.th", depth, legacy)
    model = create_model(f"resnet{depth}")
    report = load_weights(model, tmp_path / "w.th")
    assert report.layout == "akamaster"
    assert_same_outputs(model, reference, 32)


def test_akamaster_file_read_as_resnetlab_layout_is_the_silent_wrong_answer(tmp_path):
    """Why the conversion exists: the same tensors without it give other outputs."""
    reference = akamaster_file(tmp_path / "w.th")
    model = create_model("resnet20")
    load_weights(model, tmp_path / "w.th", layout="akamaster")
    wrong = create_model("resnet20")
    state = {k.replace("module.", "").replace("linear.", "fc."): v
             for k, v in torch.load(tmp_path / "w.th", weights_only=True)["state_dict"].items()}
    wrong.load_state_dict({**wrong.state_dict(), **state})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(wrong.eval()(x), reference(x), atol=1e-2)
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-5, atol=1e-5)


def test_akamaster_file_into_a_projection_model_is_refused_with_the_fix(tmp_path):
    akamaster_file(tmp_path / "w.th")
    with pytest.raises(UserError, match="no projection shortcuts: build the model with shortcut='A'"):
        load_weights(create_model("resnet20", shortcut="B"), tmp_path / "w.th")


def test_a_layout_without_an_exact_mapping_is_refused():
    """Pre-activation blocks with option A under akamaster names: no exact equivalent exists."""
    source = cifar_resnet(20, preact=True, shortcut="A")
    state = {k.replace("fc.", "linear.", 1): v for k, v in source.state_dict().items()}
    with pytest.raises(UserError, match="cannot map akamaster-layout weights exactly onto PreActBasicBlock"):
        load_weights(cifar_resnet(20, preact=True, shortcut="A"), state)


def test_explicit_layouts_are_taken_at_their_word():
    source = create_model("resnet20").eval()
    model = create_model("resnet20")
    assert load_weights(model, source.state_dict(), layout="resnetlab").layout == "resnetlab"
    assert_same_outputs(model, source, 32)
    renamed = {k.replace("fc.", "linear.", 1): v for k, v in source.state_dict().items()}
    with pytest.raises(UserError, match=r"missing \(2\): fc.bias, fc.weight; unexpected \(2\): linear.bias"):
        load_weights(create_model("resnet20"), renamed, layout="torchvision")
    with pytest.raises(UserError, match="unknown weights layout 'kuangliu'"):
        load_weights(model, renamed, layout="kuangliu")


# ---------------------------------------------------------------- chenyaofo/pytorch-cifar-models

def test_chenyaofo_file_loads_to_the_publishers_outputs(tmp_path):
    reference = chenyaofo_file(tmp_path / "cifar100_resnet20.pt")
    model = create_model("resnet20", shortcut="B", num_classes=100)
    assert load_weights(model, tmp_path / "cifar100_resnet20.pt").layout == "resnetlab"
    assert_same_outputs(model, reference, 32)
    with pytest.raises(UserError, match="projection shortcuts: build the model with shortcut='B'"):
        load_weights(create_model("resnet20", num_classes=100), tmp_path / "cifar100_resnet20.pt")


# ---------------------------------------------------------------- torchvision and timm ResNet-50

@pytest.mark.parametrize("publisher", ["torchvision", "timm"])
def test_imagenet_resnet50_files_load_to_the_publishers_outputs(tmp_path, publisher):
    torch.manual_seed(3)
    reference = randomise_bn(ImageNetResNet50(timm_names=publisher == "timm"))
    if publisher == "timm":  # model.safetensors on the Hugging Face hub
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    else:
        path = tmp_path / "resnet50.pth"
        torch.save(reference.state_dict(), path)
    model = create_model("resnet50")
    load_weights(model, path, layout=publisher)
    assert_same_outputs(model, reference, 64)


def test_truncated_and_non_weights_files_give_one_line(tmp_path):
    chenyaofo_file(tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    cases = {"cut.pt": "not a readable PyTorch weights file (truncated or corrupt?)",
             "notes.pt": "not a PyTorch or safetensors weights file (it starts with b'thes')",
             "empty.pth": "not a PyTorch or safetensors weights file (it is empty)"}
    for name, text in cases.items():
        with pytest.raises(UserError) as err:
            load_weights(create_model("resnet20", shortcut="B", num_classes=100), tmp_path / name)
        assert text in str(err.value) and "\n" not in str(err.value)
