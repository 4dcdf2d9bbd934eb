"""Third-party layouts load exactly: files built by reference implementations written here from each
publisher's architecture, with random weights and BN statistics, give the publisher's outputs."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from resnetlab import UserError, create_model, load_weights
from resnetlab.models.resnet import cifar_resnet


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affines, so a mis-ordered channel cannot hide."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)
    return model.eval()


def assert_same_outputs(ours: nn.Module, reference: nn.Module, size: int) -> None:
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference.eval()(x), ours.eval()(x)
    assert want.abs().max() > 1  # a real signal, not a vanishing one
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # only summation order differs


# ---------------------------------------------------------------- akamaster/pytorch_resnet_cifar10

class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class AkamasterBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:  # option A: planes//4 zero channels on each side
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class AkamasterResNet(nn.Module):
    def __init__(self, n, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(AkamasterBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def akamaster_file(path, depth=20, legacy=False):
    """A file as akamaster's trainer writes it: {'state_dict': DataParallel state, 'best_prec1': ...}."""
    torch.manual_seed(depth)
    reference = randomise_bn(AkamasterResNet((depth - 2) // 6))
    state = nn.DataParallel(reference).state_dict()
    assert next(iter(state)).startswith("module.")
    torch.save({"state_dict": state, "best_prec1": 91.73}, path, _use_new_zipfile_serialization=not legacy)
    return reference


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

class TorchvisionBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ChenyaofoCifarResNet(nn.Module):
    """CifarResNet of pytorch_cifar_models/resnet.py: 1x1-conv + BN projection where the shape changes."""

    def __init__(self, layers, num_classes):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, layers[0], 1)
        self.layer2 = self._make_layer(32, layers[1], 2)
        self.layer3 = self._make_layer(64, layers[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [TorchvisionBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [TorchvisionBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def chenyaofo_file(path, num_classes=100):
    torch.manual_seed(7)
    reference = randomise_bn(ChenyaofoCifarResNet([3, 3, 3], num_classes))
    torch.save(reference.state_dict(), path)  # the release assets are plain state dicts
    return reference


def test_chenyaofo_file_loads_to_the_publishers_outputs(tmp_path):
    reference = chenyaofo_file(tmp_path / "cifar100_resnet20.pt")
    model = create_model("resnet20", shortcut="B", num_classes=100)
    assert load_weights(model, tmp_path / "cifar100_resnet20.pt").layout == "resnetlab"
    assert_same_outputs(model, reference, 32)
    with pytest.raises(UserError, match="projection shortcuts: build the model with shortcut='B'"):
        load_weights(create_model("resnet20", num_classes=100), tmp_path / "cifar100_resnet20.pt")


# ---------------------------------------------------------------- torchvision and timm ResNet-50

class Bottleneck(nn.Module):
    """torchvision's (and timm's ResNet-B) bottleneck: stride in the 3x3 conv; timm names its
    activations act1..act3, torchvision shares one relu: neither holds tensors."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, timm_names=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        if timm_names:
            self.act1, self.act2, self.act3 = nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        else:
            self.relu = nn.ReLU(inplace=True)
            self.act1 = self.act2 = self.act3 = self.relu
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.act3(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet50(nn.Module):
    def __init__(self, timm_names=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3, 1, timm_names)
        self.layer2 = self._make_layer(128, 4, 2, timm_names)
        self.layer3 = self._make_layer(256, 6, 2, timm_names)
        self.layer4 = self._make_layer(512, 3, 2, timm_names)
        self.fc = nn.Linear(2048, 1000)

    def _make_layer(self, planes, blocks, stride, timm_names):
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, timm_names)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, timm_names=timm_names) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


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
