"""Reference implementations of the publishers' ResNets, written from their architectures (akamaster's
resnet.py, chenyaofo's pytorch_cifar_models/resnet.py, torchvision's and timm's ResNet-50), with
random weights and BN statistics, and the files each publisher writes."""
import torch
import torch.nn.functional as F
from torch import nn


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


def akamaster_file(path, depth=20, legacy=False, spread_on=None):
    """A file as akamaster's trainer writes it: {'state_dict': DataParallel state, 'best_prec1': ...}.
    spread_on: inputs on which the classifier is rescaled and centred, so that (unlike a random net,
    which answers one class for everything) its answers vary with the input and its preprocessing."""
    torch.manual_seed(depth)
    reference = randomise_bn(AkamasterResNet((depth - 2) // 6))
    if spread_on is not None:
        with torch.no_grad():
            reference.linear.weight *= 100
            reference.linear.bias -= reference(spread_on).mean(0)
    state = nn.DataParallel(reference).state_dict()
    assert next(iter(state)).startswith("module.")
    torch.save({"state_dict": state, "best_prec1": 91.73}, path, _use_new_zipfile_serialization=not legacy)
    return reference


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
