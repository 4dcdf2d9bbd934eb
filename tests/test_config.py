"""Recipes, overrides and the resolved-config round trip."""
import pytest
import torch
import yaml

from resnetlab.config import (
    Config, apply_overrides, config_from_dict, config_to_dict, list_recipes, load_config, save_config,
)
from resnetlab.errors import UserError

PAPER = [f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110)] + [f"cifar10_plain{d}" for d in (20, 32, 44, 56, 110)] \
    + [f"imagenet_resnet{d}" for d in (18, 34, 50, 101, 152)]


def test_every_paper_experiment_has_a_recipe_that_loads():
    names = list_recipes()
    for name in PAPER + ["cifar10_fast", "finetune"]:
        assert name in names and names[name], name
        load_config(name)


def test_every_shipped_recipe_builds_its_model():
    from resnetlab.models import create_model

    for name in list_recipes():
        cfg = load_config(name)
        model = create_model(cfg.model.name, num_classes=10, **cfg.model.kwargs)
        assert model(torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)).shape == (1, 10), name
    gpu = load_config("cifar10_resnet18")  # the GPU recipe: ResNet-18 with the 32 px stem
    assert gpu.model.kwargs == {"stem": "cifar"} and gpu.data.image_size == 32 and gpu.train.compile == "auto"


def test_cifar_recipe_is_the_papers():
    cfg = load_config("cifar10_resnet56")
    assert cfg.model.name == "resnet56"
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (cfg.schedule.kind, cfg.schedule.milestones, cfg.schedule.max_steps) == ("step", [32000, 48000], 64000)
    assert cfg.data.val_size == 5000 and cfg.schedule.warmup_until_err is None


def test_resnet110_and_its_plain_twin_inherit_the_warmup():
    for name in ("cifar10_resnet110", "cifar10_plain110"):
        cfg = load_config(name)
        assert (cfg.schedule.warmup_lr, cfg.schedule.warmup_until_err, cfg.optim.lr) == (0.01, 80.0, 0.1)
    assert load_config("cifar10_plain110").model.name == "plain110"


def test_imagenet_recipe():
    cfg = load_config("imagenet_resnet152")
    assert cfg.model.name == "resnet152" and cfg.optim.batch_size == 256 and cfg.schedule.kind == "plateau"
    assert cfg.data.image_size == 224 and cfg.optim.weight_decay == 1e-4


def test_overrides_are_typed():
    cfg = load_config("cifar10_resnet20", ["optim.lr=0.05", "schedule.epochs=3", "train.channels_last=true",
                                           "schedule.milestones=[10, 20]", "finetune.init=null"])
    assert cfg.optim.lr == 0.05 and cfg.schedule.epochs == 3 and cfg.train.channels_last == "true"
    assert cfg.schedule.milestones == [10, 20] and cfg.finetune.init is None
    # An int given for a float is widened; the default config is untouched.
    assert apply_overrides(Config(), ["optim.lr=1"]).optim.lr == 1.0 and Config().optim.lr == 0.1


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=0.1", ["optim.lrr", "valid keys in optim", "lr", "momentum"]),
    ("optimizer.lr=0.1", ["optimizer", "valid sections", "optim"]),
    ("optim.batch_size=big", ["optim.batch_size", "expected int", "'big'"]),
    ("optim.batch_size=1.5", ["optim.batch_size", "expected int"]),
    ("train.compile=3", ["train.compile", "expected str"]),
    ("optim.lr", ["SECTION.KEY=VALUE"]),
])
def test_bad_override_names_the_key(override, words):
    with pytest.raises(UserError) as err:
        load_config("cifar10_resnet20", [override])
    for word in words:
        assert word in str(err.value)


def test_recipe_file_with_base_and_bad_recipes(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: cifar10_resnet32\noptim:\n  lr: 0.2\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\ntrain:\n  seed: 7\n")  # relative to the file
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.model.name, cfg.optim.lr, cfg.train.seed, cfg.optim.batch_size) == ("resnet32", 0.2, 7, 128)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    (tmp_path / "typo.yaml").write_text("model:\n  nme: resnet20\n")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    for name, word in [("loop.yaml", "loops"), ("typo.yaml", "model.nme"), ("broken.yaml", "not valid YAML")]:
        with pytest.raises(UserError, match=word):
            load_config(str(tmp_path / name))
    with pytest.raises(UserError, match="cifar10_resnet20"):  # lists the shipped recipes
        load_config("no_such_recipe")
    with pytest.raises(UserError, match="recipe file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("cifar10_fast", ["model.kwargs={shortcut: B}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg and config_to_dict(again)["model"]["kwargs"] == {"shortcut": "B"}
    # and the saved file is itself a recipe
    assert load_config(str(tmp_path / "config.yaml")) == cfg
