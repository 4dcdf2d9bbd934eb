"""Weights of another network are named as that network, not as two hundred tensor names."""
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.models import create_model, list_models, load_weights
from resnetlab.models.identify import Fit, OtherNetwork, identify


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs).state_dict()


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("resnet1202", "preact_resnet1001")])
def test_every_registered_network_is_told_from_its_tensors(name):
    """(The two deepest are left out for time: their depth alone names them, as resnet110's does.)"""
    fits = identify(_meta(name, num_classes=10))
    assert Fit(name, ()) in fits
    twins = {f.name for f in fits} - {name}  # only a plain net and its residual twin with parameter-free shortcuts
    assert twins <= {name.replace("plain", "resnet"), name.replace("resnet", "plain")}
    assert all(f.kwargs in ((), (("shortcut", "A"),)) for f in fits if f.name != name)


def test_builds_other_than_the_default_are_named_with_their_arguments():
    assert identify(_meta("resnet56", shortcut="B")) == [Fit("resnet56", (("shortcut", "B"),))]
    assert identify(_meta("resnet32", shortcut="C")) == [Fit("resnet32", (("shortcut", "C"),))]
    assert identify(_meta("resnet50", shortcut="C")) == [Fit("resnet50", (("shortcut", "C"),))]
    assert identify(_meta("resnet18", stem="cifar", in_chans=1)) == [Fit("resnet18", (("in_chans", 1), ("stem", "cifar")))]
    assert identify(_meta("resnet74")) == [Fit("resnet74", ()), Fit("plain74", ())]  # any 6n+2 depth
    headless = {k: v for k, v in _meta("resnet34").items() if not k.startswith("fc.")}
    assert identify(headless) == [Fit("resnet34", ())]  # a file without its classifier (plain34 has no projections)
    assert identify({"encoder.weight": torch.ones(3, 3)}) == [] and identify({"conv1.weight": torch.ones(2)}) == []


def test_weights_of_another_network_are_refused_by_its_name(tmp_path):
    torch.save(create_model("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(OtherNetwork) as caught:
        load_weights(create_model("resnet18"), tmp_path / "r50.pt")
    assert str(caught.value) == ("weights do not fit the model: they are resnet50 weights (1000 classes), and the model "
                                 "is resnet18: build resnet50 to load them")
    # the same network built otherwise: the tensors and the shortcut advice say what differs
    torch.save(create_model("resnet110", num_classes=10).state_dict(), tmp_path / "r110.pt")
    with pytest.raises(UserError, match=r"missing \(10\): layer2.0.downsample.0.weight.*shortcut='A'$") as caught:
        load_weights(create_model("resnet110", num_classes=10, shortcut="B"), tmp_path / "r110.pt")
    assert not isinstance(caught.value, OtherNetwork)


def test_train_init_of_another_network_says_which_and_how_to_train_it(tmp_path, capsys):
    torch.save(create_model("resnet50").state_dict(), tmp_path / "r50.pt")
    folder = tmp_path / "photos"
    for i in range(6):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"c{i % 2}" / f"{i}.png")
    assert main(["train", "--recipe", "cifar10_fast", "--data", str(folder), "--init", str(tmp_path / "r50.pt"),
                 "--out", str(tmp_path / "run"), "--set", "data.val_size=0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "resnetlab train: error: weights do not fit the model: they are resnet50 weights, and the model is resnet20 or "
        "plain20. To fine-tune them, train resnet50: --set model.name=resnet50")
