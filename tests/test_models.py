"""Model contract: every registered net, exact sizes, and outputs equal to an independent reference."""
import functools

import pytest
import torch
import torch.nn.functional as F

import resnetlab
from resnetlab import UserError, create_model, list_models, model_info
from resnetlab.models import cifar_resnet, count_params, profile
from resnetlab.models.blocks import Block
from resnetlab.models.fuse import fuse_bn
from resnetlab.models.profile import count_macs, resnet_macs

# The paper's CIFAR sizes with option A (Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M) and
# torchvision's published ImageNet sizes.
PARAMS = {
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
# Table 1 FLOPs (multiply-adds) with the stride in the first 1x1 conv, as the paper had it.
TABLE1_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.mark.parametrize("name", list_models())
def test_contract_every_model(name):
    """Forward shape, no NaN, every parameter receives a gradient."""
    torch.manual_seed(0)
    info = model_info(name)
    model = create_model(name, num_classes=7)
    size = 32 if info.family == "cifar" else 64  # fully convolutional: 64 px keeps the test fast
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    feats = model.forward_stages(x)
    assert [f.shape[1] for f in feats] == model.stage_channels
    assert [size // f.shape[-1] for f in feats] == model.stage_strides


@pytest.mark.parametrize("name,expected", PARAMS.items())
def test_exact_parameter_counts(name, expected):
    assert profile(name).params == expected


def test_plain_twins_have_the_same_parameters_as_option_a():
    for depth in (20, 32, 44, 56, 110):
        assert profile(f"plain{depth}").params == PARAMS[f"resnet{depth}"]


def test_shortcut_options_b_and_c_add_projections():
    a, b, c = (profile("resnet20", shortcut=s).params for s in "ABC")
    # B: two 1x1 projections (16->32, 32->64) with BN; C: one on every one of the 9 blocks.
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert c > b
    assert profile("resnet34", shortcut="A").params < PARAMS["resnet34"] < profile("resnet34", shortcut="C").params


@pytest.mark.parametrize("name,gmacs", TABLE1_GMACS.items())
def test_table1_multiply_adds(name, gmacs):
    measured = profile(name, stride_on="1x1").macs / 1e9
    assert abs(measured - gmacs) < 0.07  # the paper gives one decimal (3.66 -> 3.6, 7.57 -> 7.6)


def block_kind(name: str) -> tuple:
    """What a model repeats: its family, whether it is residual, and its block class."""
    with torch.device("meta"):
        model = create_model(name)
    block = next(type(m).__name__ for m in model.modules() if isinstance(m, Block))
    return model_info(name).family, model_info(name).residual, block


@functools.lru_cache(maxsize=1)
def shallowest_of_each_kind() -> frozenset[str]:
    kinds = {}
    for name in sorted(list_models(), key=lambda n: model_info(n).depth):
        kinds.setdefault(block_kind(name), name)
    return frozenset(kinds.values())


@pytest.mark.parametrize("name", list_models())
def test_shape_arithmetic_macs_equal_the_measured_forward(name):
    """resnet_macs (what `resnetlab models` shows) equals torch's FlopCounterMode count of a real forward pass.
    Every shortcut option and stride placement, at the standard and an odd size, on the shallowest
    model of each kind (family, residual or plain, block class); a deeper one repeats the same blocks
    and is checked as built by default at its standard size (a meta forward of resnet1202 through the
    counter takes ~12 s, all variants of it over a minute of the suite)."""
    family = model_info(name).family
    variants, sizes = [{}], [model_info(name).input_size]
    if name in shallowest_of_each_kind():
        variants += [{"shortcut": "C"}] + ([{"stride_on": "1x1"}, {"shortcut": "A"}] if family == "imagenet" else [{"shortcut": "B"}])
        sizes.append(97 if family == "imagenet" else 40)  # 97: odd sizes round like the convs do
    for kwargs in variants:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        for size in sizes:
            assert resnet_macs(model, size) == count_macs(model, size), (kwargs, size)


def test_the_variants_are_checked_on_every_kind_of_model():
    """The shallowest-of-each-kind rule above covers basic and bottleneck blocks, plain, residual and
    pre-activation, in both families."""
    assert shallowest_of_each_kind() == {"resnet18", "resnet50", "plain18", "plain50", "preact_resnet18",
                                         "preact_resnet50", "resnet20", "plain20", "preact_resnet110",
                                         "preact_resnet164"}


@pytest.mark.parametrize("name,kwargs,size", [("resnet20", {}, 32), ("resnet56", {"shortcut": "B"}, 32),
                                              ("resnet50", {}, 224), ("resnet34", {"shortcut": "A"}, 224),
                                              ("preact_resnet164", {}, 32)])
def test_profile_macs_are_half_of_torch_flop_counter(name, kwargs, size):
    """profile()'s multiply-adds (the bench's MAC/s, `resnetlab models`) against torch's own counter:
    FlopCounterMode counts 2 FLOPs per multiply-add of the convolutions and the classifier, and
    nothing else, so its total is exactly twice ours."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(name, **kwargs).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    assert {str(op) for op in counter.get_flop_counts()["Global"]} == {"aten.convolution", "aten.addmm"}
    assert counter.get_total_flops() == 2 * profile(name, size, **kwargs).macs

def test_preact_cifar_sizes():
    # Identity Mappings paper, Table 3: ResNet-164 1.7M, ResNet-1001 10.2M (our 10.3M counts BN too).
    assert round(profile("preact_resnet164").params / 1e6, 1) == 1.7
    assert round(profile("preact_resnet1001").params / 1e6, 1) == 10.3


def test_any_6n_plus_2_depth_and_bad_depths():
    assert count_params(create_model("resnet74")) == count_params(cifar_resnet(74))
    assert not model_info("plain74").residual
    with pytest.raises(UserError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        create_model("resnet21")
    # a name in a recipe or a crafted checkpoint built for ever, growing to every byte of memory
    with pytest.raises(UserError, match=r"'resnet60000002': CIFAR depths up to 10000 are built"):
        create_model("resnet60000002")
    with pytest.raises(UserError, match="unknown model 'plain" + "8" * 40):
        create_model("plain" + "8" * 40)


def test_errors_name_the_choices():
    with pytest.raises(UserError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")
    with pytest.raises(UserError, match="unknown argument.*depht.*valid: num_classes"):
        create_model("resnet20", depht=3)
    with pytest.raises(UserError, match="shortcut must be one of 'A', 'B', 'C'"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(UserError, match="plain"):
        create_model("plain20", residual=True)
    with pytest.raises(UserError, match="zero_init_residual"):
        create_model("plain20", zero_init_residual=True)
    with pytest.raises(UserError, match="stem must be one of 'imagenet', 'cifar'"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(UserError, match="CIFAR net.*3x3 stem"):
        create_model("resnet20", stem="imagenet")


@pytest.mark.parametrize("call, message", [
    (lambda: create_model(None), "create_model takes a model name such as 'resnet50' .*, got NoneType"),
    (lambda: create_model(50), "create_model takes a model name such as 'resnet50' .*, got int"),
    (lambda: create_model("resnet20", num_classes="10"), "num_classes must be an integer of at least 1, got '10'"),
    (lambda: create_model("resnet20", num_classes=10.0), "num_classes must be an integer of at least 1, got 10.0"),
    (lambda: create_model("resnet20", num_classes=True), "num_classes must be an integer of at least 1, got True"),
    (lambda: profile("resnet8", input_size=0), "input_size must be an integer of at least 1, got 0"),  # read as 32
    (lambda: profile("resnet8", input_size=-5), "input_size must be an integer of at least 1, got -5"),  # nonsense MACs
    (lambda: create_model("resnet50", weights=""), r"weights= takes a tag such as tv2_in1k or a name such as "
                                                   r"resnet50.tv2_in1k \(`resnetlab weights list` shows them\), got ''"),
    (lambda: create_model("resnet20", num_classes=10**12),  # torch's allocator failure was a paragraph of C++
     r"num_classes=1000000000000: its classifier needs 2.6e\+05 GB, more memory than this machine can give"),
    (lambda: fuse_bn("x"), r"fuse_bn takes an nn.Module such as create_model\('resnet20'\), got str"),
])
def test_a_wrong_python_argument_is_one_user_error_naming_it(call, message):
    with pytest.raises(UserError, match=f"^{message}$"):
        call()


def test_resnet18_with_the_cifar_stem():
    # The usual CIFAR ResNet-18: 11,173,962 parameters with 10 classes; the stem's 3x3 conv keeps
    # 32x32 into layer1, so layer4 sees 4x4 maps (the 7x7/2 + max-pool stem would leave 1x1).
    model = create_model("resnet18", stem="cifar", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert [f.shape[-1] for f in model.forward_stages(torch.randn(1, 3, 32, 32))] == [32, 16, 8, 4]
    assert model.stage_strides == [1, 2, 4, 8]


def test_torchvision_parameter_names_and_shapes():
    """Spell out torchvision's resnet18 state dict independently and compare name by name."""
    def bn(prefix, c):
        return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": ()}

    expected = {"conv1.weight": (64, 3, 7, 7)} | bn("bn1", 64)
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for i in range(2):
            p = f"layer{stage}.{i}"
            expected[f"{p}.conv1.weight"] = (width, cin if i == 0 else width, 3, 3)
            expected |= bn(f"{p}.bn1", width)
            expected[f"{p}.conv2.weight"] = (width, width, 3, 3)
            expected |= bn(f"{p}.bn2", width)
            if i == 0 and stage > 1:
                expected[f"{p}.downsample.0.weight"] = (width, cin, 1, 1)
                expected |= bn(f"{p}.downsample.1", width)
        cin = width
    expected |= {"fc.weight": (1000, 512), "fc.bias": (1000,)}
    got = {k: tuple(v.shape) for k, v in create_model("resnet18").state_dict().items()}
    assert got == expected
    assert len(create_model("resnet50").state_dict()) == 320  # torchvision's count


def test_zero_init_residual_makes_blocks_identity():
    model = create_model("resnet20", zero_init_residual=True).eval()
    block = model.layer1[1]  # identity shortcut: output must be relu(x) = x for x >= 0
    x = torch.rand(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x)


def test_option_a_shortcut_pads_zeros_and_subsamples():
    block = create_model("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.downsample(x)
    assert out.shape == (1, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert out[:, 16:].abs().sum() == 0
    assert not list(block.downsample.parameters())


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_option_a_shortcut_gradient_keeps_the_inputs_memory_format(memory_format):
    """Its gradient meets the block's first convolution's in one addition: in different layouts
    that addition ran 12x slower (models/shortcuts._SubsamplePad)."""
    shortcut = create_model("resnet20").train().layer3[0].downsample
    x = torch.randn(3, 32, 6, 6).contiguous(memory_format=memory_format).requires_grad_()
    dy = torch.randn(3, 64, 3, 3)
    grad = torch.autograd.grad(shortcut(x), x, dy)[0]
    expected = torch.zeros(3, 32, 6, 6)
    expected[:, :, ::2, ::2] = dy[:, :32]  # the slice's gradient, written out
    assert torch.equal(grad, expected) and grad.stride() == x.stride()
    with torch.no_grad():  # inference and FX traces run the plain ops
        torch.testing.assert_close(shortcut(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 32)), rtol=0, atol=0)


# ---- independent reference: the forward pass written with torch.nn.functional on the state dict

def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def _reference_forward(sd, x, stem, stages, bottleneck, option):
    if stem == "imagenet":
        x = F.max_pool2d(F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1)
    else:
        x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s, blocks in enumerate(stages, start=1):
        for i in range(blocks):
            p = f"layer{s}.{i}"
            stride = 2 if (i == 0 and s > 1) else 1
            if bottleneck:
                out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                out = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
                out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
                out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                short = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            elif option == "A" and out.shape != x.shape:
                sub = x[:, :, ::stride, ::stride]
                short = torch.cat([sub, torch.zeros_like(sub)[:, : out.shape[1] - sub.shape[1]]], 1)
            else:
                short = x
            x = F.relu(out + short)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics so BN really is checked
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name,stem,stages,bottleneck,option,size", [
    ("resnet18", "imagenet", [2, 2, 2, 2], False, "B", 64),
    ("resnet50", "imagenet", [3, 4, 6, 3], True, "B", 64),
    ("resnet20", "cifar", [3, 3, 3], False, "A", 32),
    ("resnet18", "cifar", [2, 2, 2, 2], False, "B", 32),  # the ImageNet net with the CIFAR stem
])
def test_outputs_equal_independent_reference(name, stem, stages, bottleneck, option, size):
    torch.manual_seed(0)
    kwargs = {"stem": stem} if stem != model_info(name).family else {}
    model = _randomise_bn(create_model(name, num_classes=10, **kwargs))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = _reference_forward(model.state_dict(), x, stem, stages, bottleneck, option)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_he_initialisation_std():
    conv = create_model("resnet50").layer3[0].conv2  # 3x3, 256 -> 256, fan_out = 256 * 9
    assert abs(conv.weight.std().item() - (2 / (256 * 9)) ** 0.5) < 1e-3


def test_public_api_is_reexported():
    from resnetlab.engine.signals import TrainingInterrupted
    from resnetlab.engine.state import TrainingDiverged

    assert resnetlab.create_model is create_model and "resnet56" in resnetlab.list_models()
    # the README tells a Python caller of train_and_evaluate to catch these
    assert (resnetlab.TrainingInterrupted, resnetlab.TrainingDiverged) == (TrainingInterrupted, TrainingDiverged)
    assert {"TrainingInterrupted", "TrainingDiverged", "load", "UserError"} <= set(resnetlab.__all__)
