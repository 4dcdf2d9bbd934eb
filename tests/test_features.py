"""Feature maps for detection (documented names, shapes, strides; frozen BN), embeddings, BN folding."""
import pytest
import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.features import FeatureExtractor, FrozenBatchNorm2d, embed
from resnetlab.models.fuse import conv_bn_pairs, count_batchnorms, fuse_bn


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine, so folding and freezing are really exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name, channels", [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_imagenet_nets_give_c2_to_c5_at_strides_4_to_32(name, channels):
    backbone = FeatureExtractor(create_model(name).eval())
    feats = backbone(torch.randn(2, 3, 96, 128))
    assert list(feats) == ["C2", "C3", "C4", "C5"]
    assert list(backbone.out_channels.values()) == channels and list(backbone.strides.values()) == [4, 8, 16, 32]
    for key, f in feats.items():
        assert f.shape == (2, backbone.out_channels[key], 96 // backbone.strides[key], 128 // backbone.strides[key])


def test_cifar_nets_name_maps_by_stride_and_the_last_map_is_forward_features():
    model = randomise_bn(create_model("resnet20"))
    backbone = FeatureExtractor(model, stages=("C1", "C2"))
    x = torch.randn(3, 3, 32, 32)
    feats = backbone(x)
    assert list(feats) == ["C1", "C2"] and feats["C1"].shape == (3, 32, 16, 16) and feats["C2"].shape == (3, 64, 8, 8)
    torch.testing.assert_close(feats["C2"], model.forward_features(x))
    with pytest.raises(UserError, match="C5"):
        FeatureExtractor(model, stages=("C5",))


def test_preact_last_map_includes_the_final_bn_relu():
    model = randomise_bn(create_model("preact_resnet18"))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(FeatureExtractor(model)(x)["C5"], model.forward_features(x))


def test_frozen_bn_matches_eval_bn_and_does_not_train():
    model = randomise_bn(create_model("resnet18"))
    x = torch.randn(2, 3, 64, 64)
    expected = FeatureExtractor(model)(x)["C5"]
    backbone = FeatureExtractor(create_model("resnet18"), frozen_bn=True)
    backbone.model.load_state_dict(model.state_dict())  # same keys: BN state lives on as buffers
    backbone.train()  # frozen BN ignores train mode: it never uses batch statistics
    assert count_batchnorms(backbone) == 0 and any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    torch.testing.assert_close(backbone(x)["C5"], expected, rtol=1e-4, atol=1e-4)
    trainable = {n for n, p in backbone.named_parameters()}
    assert trainable and not any(".bn" in n or n.startswith("model.bn1") for n in trainable)


def test_embedding_is_the_pooled_feature_before_the_classifier():
    model = randomise_bn(create_model("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    e = embed(model, x)
    assert e.shape == (4, model.num_features)
    torch.testing.assert_close(model.fc(e), model(x))


@pytest.mark.parametrize("name, size", [("resnet20", 32), ("resnet50", 64), ("preact_resnet18", 64), ("plain20", 32)])
def test_bn_folding_keeps_outputs(name, size):
    model = randomise_bn(create_model(name))
    fused = fuse_bn(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert count_batchnorms(model) > 0 and type(fused) is type(model)
    # Every BN that follows a conv is gone; only pre-activation BNs (after ReLU/addition) remain.
    expected_left = 0 if not name.startswith("preact") else count_batchnorms(model) - len(conv_bn_pairs(model))
    assert count_batchnorms(fused) == expected_left
    assert count_batchnorms(model) == len(conv_bn_pairs(model)) + expected_left  # the original is untouched
