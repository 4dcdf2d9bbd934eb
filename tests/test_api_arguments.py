"""The library's entry points name a wrong argument at the call, in one UserError, instead of a
TypeError from `re` or pathlib, an AttributeError deep in the engine, a string iterated by its
characters, or a truthy word taken for True. (stride_on on a net of basic blocks stays accepted, as
it changes nothing: checkpoints written with it must load.)"""
import pytest

import resnetlab
from resnetlab.config import Config, ModelConfig, load_config
from resnetlab.engine import train_and_evaluate
from resnetlab.errors import UserError
from resnetlab.models.features import FeatureExtractor


@pytest.mark.parametrize("call, message", [
    (lambda: resnetlab.profile(None), "profile takes a model name such as 'resnet50' (list_models() names them), got "
                                      "NoneType"),
    (lambda: resnetlab.load(b"runs/a"), "expected a run directory, a checkpoint file or a published weights name (a "
                                        "str or a path), got bytes"),
    (lambda: resnetlab.load(None), "expected a run directory, a checkpoint file or a published weights name (a str "
                                   "or a path), got NoneType"),
    (lambda: train_and_evaluate(None, "unused"), "train_and_evaluate takes a Config (resnetlab.config.load_config("
                                                 "RECIPE, [OVERRIDES]) makes one), got NoneType"),
    (lambda: train_and_evaluate("cifar10_fast", "unused"), "train_and_evaluate takes a Config (resnetlab.config."
                                                           "load_config(RECIPE, [OVERRIDES]) makes one), got str"),
    (lambda: load_config("cifar10_fast", "optim.lr=0.1"), "overrides are a list of 'SECTION.KEY=VALUE' strings or "
                                                          "(key, value) pairs, got one string 'optim.lr=0.1': put it in "
                                                          "a list"),
    (lambda: FeatureExtractor(resnetlab.create_model("resnet8"), stages="C3"),
     "stages takes a list of names such as ('C3', 'C4'), got the string 'C3': write stages=('C3',)"),
    (lambda: resnetlab.create_model("resnet20", zero_init_residual="no"), "zero_init_residual takes True or False, "
                                                                          "got str"),
    (lambda: load_config("cifar10_fast", {"optim.lr=0.1"}), "overrides are a list of 'SECTION.KEY=VALUE' strings or "
                                                            "(key, value) pairs, or a dict; got a set, which has no "
                                                            "order"),
    (lambda: load_config("cifar10_fast", [("optim.lr",)]), "override ('optim.lr',): expected 'SECTION.KEY=VALUE' (e.g. "
                                                           "'optim.lr=0.05') or a (key, value) pair"),
    (lambda: load_config(3), "recipe must be a shipped recipe name or a YAML file (a str or pathlib.Path), got int"),
    (lambda: train_and_evaluate(load_config(), None), "workdir must be a path (a str or pathlib.Path), got NoneType"),
    (lambda: train_and_evaluate(load_config(), " "), "workdir is blank (' '; an unset variable?)"),
    (lambda: train_and_evaluate(Config(model="resnet20"), "unused"), "Config's model must be a "
                                                                     "resnetlab.config.ModelConfig, got str"),
    (lambda: train_and_evaluate(Config(model=ModelConfig(name=20)), "unused"), "config key model.name: expected str, "
                                                                               "got 20 (int)"),
    (lambda: train_and_evaluate(load_config(), "unused", resume="no"), "resume takes True or False, got str"),
])
def test_a_wrong_argument_is_named_at_the_call(call, message):
    with pytest.raises(UserError) as err:
        call()
    assert str(err.value) == message


def test_a_recipe_path_and_overrides_as_python_writes_them(tmp_path, monkeypatch):
    """load_config(Path(...)) failed on .strip(), overrides=None on iteration, and a dict was iterated by its keys."""
    from pathlib import Path

    from resnetlab.config import recipe_dir

    shipped = Path(str(recipe_dir() / "cifar10_fast.yaml"))
    assert load_config(shipped) == load_config("cifar10_fast") == load_config("cifar10_fast", None)
    (tmp_path / "mine.yaml").write_text("base: cifar10_fast\noptim:\n  lr: 0.2\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config("~/mine.yaml").optim.lr == load_config(Path("~/mine.yaml")).optim.lr == 0.2
    given = load_config("cifar10_fast", {"optim.lr": 0.3, "schedule.max_steps": 7})
    assert given == load_config("cifar10_fast", [("optim.lr", 0.3), ("schedule.max_steps", 7)])
    assert (given.optim.lr, given.schedule.max_steps, given.schedule.epochs) == (0.3, 7, None)


def test_the_cifar_stem_is_profiled_at_32_px():
    """profile('resnet18', stem='cifar') counted 27.2 G multiply-adds at 224 px: the stem is for 32 px images."""
    counted = resnetlab.profile("resnet18", stem="cifar", num_classes=10)
    assert (counted.params, counted.input_size) == (11_173_962, 32)
    assert counted.macs == resnetlab.profile("resnet18", 32, stem="cifar", num_classes=10).macs == 555_422_720
    assert resnetlab.profile("resnet18").input_size == 224


def test_a_bare_model_name_suggests_its_own_weights_first():
    with pytest.raises(UserError, match=r"^unknown weights 'resnet20'; did you mean resnet20\.akamaster_c10, "
                                        r"resnet20\.chenyaofo_c10, resnet20\.chenyaofo_c100, "):
        resnetlab.load("resnet20")
