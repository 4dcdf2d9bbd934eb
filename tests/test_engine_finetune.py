"""Fine-tuning: new classifier, frozen stem/stages (weights and BN statistics), lr groups; the optimizer."""
import copy

import pytest
import torch

from resnetlab.config import Config, apply_overrides
from resnetlab.engine.finetune import apply_freezing, load_init_weights, param_groups, set_train_mode
from resnetlab.engine.setup import build_optimizer, make_sgd, set_lr
from resnetlab.errors import UserError, command_line
from resnetlab.models import create_model


def finetune_cfg(**values):
    return apply_overrides(Config(), [(f"finetune.{k}", v) for k, v in values.items()] + [("model.name", "resnet8")])


def sgd_step(model, optimizer, eval_bns):
    set_train_mode(model, eval_bns)
    x = torch.randn(8, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, 4, (8,))).backward()
    optimizer.step()


def test_init_replaces_a_classifier_of_another_size_and_keeps_the_rest(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet8", num_classes=10)
    torch.save({"model": source.state_dict()}, tmp_path / "pre.pt")
    target = create_model("resnet8", num_classes=4)
    fresh_fc = target.fc.weight.clone()
    assert load_init_weights(target, str(tmp_path / "pre.pt")).skipped == ["fc.weight", "fc.bias"]
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(target.fc.weight, fresh_fc)


def test_a_safetensors_export_of_another_network_is_refused_by_the_name_it_records(tmp_path):
    """A plain8 export started a resnet8 fine-tune (the same names and shapes: option-A shortcuts have no
    parameters); the checkpoint it came from was refused in one line."""
    import json

    from resnetlab.models import save_safetensors

    save_safetensors(create_model("plain8"), tmp_path / "p.safetensors", {"resnetlab": json.dumps({"model_name": "plain8"})})
    with pytest.raises(UserError, match=rf"^{tmp_path / 'p.safetensors'} holds a plain8; this run trains resnet8: set "
                                        r"model.name=plain8"):
        load_init_weights(create_model("resnet8", num_classes=4), str(tmp_path / "p.safetensors"), "resnet8")
    save_safetensors(create_model("plain8"), tmp_path / "plain.safetensors")  # no metadata: loaded as weights
    assert load_init_weights(create_model("plain8", num_classes=4), str(tmp_path / "plain.safetensors"),
                             "plain8").skipped == ["fc.weight", "fc.bias"]


def test_freeze_stem_and_first_stage_keeps_weights_and_bn_statistics():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4)
    cfg = finetune_cfg(freeze_stages=1)
    eval_bns = apply_freezing(model, cfg.finetune)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, 0.1)
    sgd_step(model, optimizer, eval_bns)
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert len(frozen) > 5 and all(torch.equal(before[k], after[k]) for k in frozen)  # incl. running_mean/var
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    assert model.layer1[0].bn1.training is False and model.layer2[0].bn1.training is True


def test_freeze_bn_fixes_every_batchnorm():
    model = create_model("resnet8", num_classes=4)
    cfg = finetune_cfg(freeze_bn=True)
    eval_bns = apply_freezing(model, cfg.finetune)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, 0.1)
    sgd_step(model, optimizer, eval_bns)
    bn_keys = [k for k in before if ".bn" in k or k.startswith("bn1") or "downsample.1" in k]
    assert bn_keys and all(torch.equal(before[k], model.state_dict()[k]) for k in bn_keys)


def test_the_optimizer_is_fused_sgd_with_plain_sgds_update():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4)
    twin = copy.deepcopy(model)
    for parameter, same in zip(model.parameters(), twin.parameters()):
        parameter.grad = torch.randn_like(parameter)
        same.grad = parameter.grad.clone()
    cfg = finetune_cfg(backbone_lr_mult=0.1)
    optimizer = build_optimizer(model, cfg)
    plain = torch.optim.SGD(param_groups(twin, 0.1), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                            weight_decay=cfg.optim.weight_decay)
    assert optimizer.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(3):
        optimizer.step()
        plain.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert make_sgd([torch.zeros(2, dtype=torch.int64)], lr=0.1).defaults["fused"] is None  # not floating: plain


def test_backbone_lr_multiplier_makes_two_groups():
    model = create_model("resnet8", num_classes=4)
    cfg = finetune_cfg(backbone_lr_mult=0.1)
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, 0.5)
    backbone, head = optimizer.param_groups
    assert (backbone["lr"], head["lr"]) == pytest.approx((0.05, 0.5))
    assert len(head["params"]) == 2 and len(backbone["params"]) == len(list(model.parameters())) - 2


def test_bad_finetune_settings():
    model = create_model("resnet8", num_classes=4)
    with pytest.raises(UserError, match="freeze_stages=4 but the model has 3 stages"):
        apply_freezing(model, finetune_cfg(freeze_stages=4).finetune)
    with pytest.raises(UserError, match="backbone_lr_mult"):
        param_groups(model, -1.0)


def test_init_weights_with_nan_are_refused_in_one_line_but_a_replaced_head_may_hold_them(tmp_path):
    """A diverged run's weights: fine-tuning would report a NaN loss and advise a lower lr; a linear
    probe would fit on NaN features. A classifier of another class count is not loaded, so its values do not count."""
    source = create_model("resnet8", num_classes=10).state_dict()
    torch.save({**source, "fc.weight": torch.full_like(source["fc.weight"], float("nan"))}, tmp_path / "head.pt")
    assert load_init_weights(create_model("resnet8", num_classes=4), str(tmp_path / "head.pt")).skipped == ["fc.weight", "fc.bias"]
    source["layer2.0.bn1.running_var"][0] = float("inf")
    torch.save(source, tmp_path / "inf.pt")
    with pytest.raises(UserError) as err:
        load_init_weights(create_model("resnet8", num_classes=10), str(tmp_path / "inf.pt"))
    assert str(err.value) == (f"{tmp_path / 'inf.pt'} holds NaN or infinite values (layer2.0.bn1.running_var): weights "
                              "of a diverged run or a damaged file; choose other weights")


def test_fine_tuning_settings_without_weights_are_warned_once_named():
    """`--recipe finetune` without --init trained a random backbone at a tenth of the lr, without a word."""
    from resnetlab.config import FinetuneConfig
    from resnetlab.engine.finetune import without_init_warning

    assert without_init_warning(FinetuneConfig()) is None  # training from scratch
    assert without_init_warning(FinetuneConfig(init="resnet18.tv_in1k", backbone_lr_mult=0.1)) is None
    assert without_init_warning(FinetuneConfig(backbone_lr_mult=0.1)) == (
        "finetune.backbone_lr_mult=0.1 is for pretrained weights, but finetune.init is not set, so the backbone starts "
        "from random weights; set finetune.init (`resnetlab weights list` names published weights); to train from "
        "scratch, use a recipe made for it (photos_scratch)")
    with command_line():  # `resnetlab train` says it in its options
        assert without_init_warning(FinetuneConfig(backbone_lr_mult=0.1)).endswith(
            "from random weights; pass --init WEIGHTS (`resnetlab weights list`); to train from scratch, use a recipe "
            "made for it (photos_scratch, or no --recipe and --init none)")
    assert without_init_warning(FinetuneConfig(freeze_stages=2, linear_probe=True)).startswith(
        "finetune.freeze_stages=2, finetune.linear_probe are for pretrained weights")


def test_the_classifier_rows_of_a_checkpoint_follow_the_class_names(tmp_path):
    """A run of airplane/automobile/bird fine-tuned on bird/cat/deer kept its head by position: bird started from
    airplane's row, and bird's own trained row went to deer. Rows follow the names now, by count or not."""
    from resnetlab.engine import load_checkpoint, train_and_evaluate
    from test_engine_train import tiny_config

    train_and_evaluate(tiny_config(("schedule.max_steps", 1)), tmp_path / "pre")  # synthetic class0 .. class3
    pre = load_checkpoint(tmp_path / "pre" / "checkpoints" / "last.pt").artifact
    for classes in (["class2", "cat", "class0", "dog"], ["class3", "class1"]):
        torch.manual_seed(0)
        model = create_model(pre.model_name, num_classes=len(classes))
        fresh = model.fc.weight.detach().clone()
        loaded = load_init_weights(model, str(tmp_path / "pre"), pre.model_name, classes)
        assert loaded.skipped == [] and loaded.head.startswith("classifier rows matched by class name: ")
        for i, name in enumerate(classes):
            want = pre.weights["fc.weight"][pre.classes.index(name)] if name in pre.classes else fresh[i]
            assert torch.equal(model.fc.weight[i], want), name
    from resnetlab.inference.export import export_checkpoint

    export_checkpoint(tmp_path / "pre", "safetensors", tmp_path / "pre.safetensors")  # names its classes too
    model = create_model(pre.model_name, num_classes=2)
    assert load_init_weights(model, str(tmp_path / "pre.safetensors"), pre.model_name, ["class3", "class1"]).head
    assert torch.equal(model.fc.weight, pre.weights["fc.weight"][[3, 1]])
    same = create_model(pre.model_name, num_classes=4)
    assert load_init_weights(same, str(tmp_path / "pre"), pre.model_name, list(pre.classes)) == ([], None)
    assert torch.equal(same.fc.weight, pre.weights["fc.weight"])


def test_a_checkpoint_of_the_same_net_built_otherwise_is_refused_in_one_line(tmp_path):
    """A stride_on=1x1 resnet50 (every shape the same) loaded silently into a run that strides the 3x3; option A vs
    B shortcuts gave a dump of keys. One line, with the kwargs that fine-tune it as it was trained."""
    from resnetlab.engine.checkpoint import save_checkpoint
    from resnetlab.engine.records import Checkpoint

    for name, kwargs, other in (("resnet50", {"stride_on": "1x1"}, {}), ("resnet8", {"shortcut": "B"}, {})):
        save_checkpoint(Checkpoint(checkpoint_of(name, kwargs)), tmp_path / f"{name}.pt")
        with pytest.raises(UserError) as err:
            load_init_weights(create_model(name, num_classes=3, **other), str(tmp_path / f"{name}.pt"), name)
        words = ", ".join(f"{k}: {v}" for k, v in kwargs.items())
        assert str(err.value).startswith(f"{tmp_path / f'{name}.pt'} holds a {name} built with {{{words}}}; this run "
                                         "builds it otherwise (first of ")
        assert str(err.value).endswith(f"set model.kwargs={{{words}}} to fine-tune it as it was trained")
        assert load_init_weights(create_model(name, num_classes=3, **kwargs), str(tmp_path / f"{name}.pt"), name)


def checkpoint_of(name: str, kwargs: dict):
    """A resnetlab checkpoint of `name` built with `kwargs` (4 classes), as a run saves one."""
    from resnetlab.config import ModelConfig
    from resnetlab.data.normalize import Normalizer
    from resnetlab.engine.state import make_artifact

    cfg = Config(model=ModelConfig(name, kwargs))
    norm = Normalizer("channel", torch.zeros(3), torch.ones(3)).state()
    return make_artifact(create_model(name, num_classes=4, **kwargs), cfg, ["a", "b", "c", "d"], norm)
