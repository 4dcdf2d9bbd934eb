"""Recipes, overrides and the resolved-config round trip."""
import pytest
import torch
import yaml

from resnetlab.config import (
    Config, apply_overrides, config_from_dict, config_to_dict, list_recipes, load_config, save_config,
)
from resnetlab.errors import UserError

PAPER = [f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110, 1202)] + [f"cifar10_plain{d}" for d in (20, 32, 44, 56, 110)] \
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
    assert cfg.train.test_protocol == "10crop"  # Sec. 3.4: "for comparison studies ... the standard 10-crop testing"
    # the photo recipes built on it keep the centre view (a 10x longer test, and the default of `eval RUN`)
    assert load_config("finetune").train.test_protocol == load_config("photos_scratch").train.test_protocol == "center"


def test_imagenet_bottleneck_recipes_build_the_papers_net_with_table_1s_flops():
    """They built torchvision's v1.5 (the stride on the 3x3): 4.09/7.80/11.51 GFLOPs against 3.8/7.6/11.3."""
    import resnetlab

    for depth, paper in ((50, 3.8), (101, 7.6), (152, 11.3)):
        model = load_config(f"imagenet_resnet{depth}").model
        assert model.kwargs == {"stride_on": "1x1"}
        assert abs(resnetlab.profile(model.name, **model.kwargs).macs / 1e9 - paper) < 0.1, depth


def test_the_depth_experiment_runs_resnet1202_with_the_papers_recipe():
    """Its notes said to add resnet1202, and it stopped: no recipe."""
    from resnetlab.reports.experiments import get_experiment, plan_runs

    runs = plan_runs(get_experiment("depth"), models=["resnet20", "resnet1202"], seeds=[0])
    assert [r.recipe for r in runs] == ["cifar10_resnet20", "cifar10_resnet1202"]
    cfg = load_config("cifar10_resnet1202")
    assert cfg.model.name == "resnet1202" and cfg.schedule.warmup_until_err is None and cfg.optim.lr == 0.1


def test_overrides_are_typed():
    cfg = load_config("cifar10_resnet20", ["optim.lr=0.05", "schedule.epochs=3", "train.channels_last=true",
                                           "schedule.milestones=[10, 20]", "finetune.init=null"])
    assert cfg.optim.lr == 0.05 and cfg.schedule.epochs == 3 and cfg.train.channels_last == "true"
    assert cfg.schedule.milestones == [10, 20] and cfg.finetune.init is None
    # An int given for a float is widened; the default config is untouched.
    assert apply_overrides(Config(), ["optim.lr=1"]).optim.lr == 1.0 and Config().optim.lr == 0.1


def test_max_steps_override_replaces_a_recipes_epochs():
    # cifar10_fast counts 7 epochs; --set schedule.max_steps=200 used to be ignored without a word
    cfg = load_config("cifar10_fast", ["schedule.max_steps=200"])
    assert (cfg.schedule.max_steps, cfg.schedule.epochs) == (200, None)
    both = load_config("cifar10_fast", ["schedule.max_steps=200", "schedule.epochs=3"])
    assert (both.schedule.max_steps, both.schedule.epochs) == (200, 3)  # epochs given after: they decide
    later = load_config("cifar10_fast", ["schedule.epochs=3", "schedule.max_steps=200"])
    assert (later.schedule.max_steps, later.schedule.epochs) == (200, None)  # max_steps given after: it decides
    assert load_config("cifar10_fast", ["optim.lr=0.2"]).schedule.epochs == 7


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


def test_scientific_notation_is_a_float_in_recipes_and_overrides(tmp_path):
    (tmp_path / "sci.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\nschedule:\n  max_steps: 64e3\n"
                                       "  warmup_lr: 1E-5\n")
    cfg = load_config(str(tmp_path / "sci.yaml"), ["optim.momentum=9e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (1e-3, 5e-4, 0.9)
    assert cfg.schedule.max_steps == 64000 and type(cfg.schedule.max_steps) is int and cfg.schedule.warmup_lr == 1e-5
    assert load_config("cifar10_resnet20", ["optim.lr=1e6"]).optim.lr == 1e6
    assert yaml.safe_load("1e-3") == "1e-3"  # PyYAML itself is left as it is
    assert load_config("cifar10_resnet20", ["schedule.max_steps=1.5e3"]).schedule.max_steps == 1500  # whole: fine
    with pytest.raises(UserError, match="schedule.max_steps.*expected int"):
        load_config("cifar10_resnet20", ["schedule.max_steps=1.5"])


@pytest.mark.parametrize("override, expected", [
    ("train.log_every=0", "train.log_every=0 is out of range: expected an integer >= 1"),
    ("optim.label_smoothing=2", "optim.label_smoothing=2.0 is out of range: expected a finite number in [0, 1)"),
    ("train.eval_every=-1", "train.eval_every=-1 is out of range: expected an integer >= 0"),
    ("data.val_size=-3", "data.val_size=-3 is out of range: expected an integer >= 0"),
    ("data.val_size=1.0", "data.val_size=1.0: a count of 1 or the fraction 1 (every image)? Write 1 for one image; "
                          "a fraction must be below 1"),  # it was taken as a count of 1
    ("train.workers=-1", "train.workers=-1 is out of range: expected an integer >= 0"),
    ("optim.lr=.nan", "optim.lr=nan is out of range: expected a finite number >= 0"),
    ("optim.lr=.inf", "optim.lr=inf is out of range: expected a finite number >= 0"),
    ("optim.lr=inf", "optim.lr=inf is out of range: expected a finite number >= 0"),  # YAML reads `inf` as a string:
    ("optim.lr=NaN", "optim.lr=nan is out of range: expected a finite number >= 0"),  # it said "expected float"
    ("optim.weight_decay=-Infinity", "optim.weight_decay=-inf is out of range: expected a finite number >= 0"),
    ("optim.momentum=1", "optim.momentum=1.0 is out of range: expected a finite number in [0, 1)"),
    ("schedule.gamma=10", "schedule.gamma=10.0 is out of range: expected a finite number in (0, 1]"),
    ("train.stop_at_val_top1=0", "train.stop_at_val_top1=0.0 is out of range: expected a finite number in (0, 100]"),
    ("train.seed=-1", "train.seed=-1 is out of range: expected an integer in [0, 18446744073709551615]"),
    ("finetune.freeze_stages=-2", "finetune.freeze_stages=-2 is out of range: expected an integer >= -1"),
    ("schedule.milestones=[10, -5]", "schedule.milestones=[10, -5]: expected a list of numbers >= 0 (in steps), got -5"),
    ("schedule.milestones_unit=epoch", "schedule.milestones_unit='epoch': expected steps or epochs"),
    ("data.scale_min=600", "data.scale_min=600 > data.scale_max=480"),
    ("data.progressive_scales=[0.5, 0]", "data.progressive_scales=[0.5, 0]: expected a list of fractions of "
                                         "data.image_size in (0, 1], one per epoch from the first; got 0"),
    ("data.progressive_scales=[0.5, 1.5]", "got 1.5"),
    ("data.progressive_scales=[true]", "got True"),
    ("data.progressive_scales=[16]", "got 16"),
    ("train.test_protocol=mirror", "train.test_protocol='mirror': expected one of center, flip, 10crop, multiscale"),
    ("optim.momentum=0", "optim.nesterov=true needs optim.momentum > 0"),  # cifar10_fast uses nesterov
])
def test_out_of_range_values_name_the_key_the_value_and_the_range(override, expected):
    with pytest.raises(UserError) as err:
        load_config("cifar10_fast", [override])
    assert expected in str(err.value)


def test_every_numeric_field_declares_its_range():
    import dataclasses
    import typing

    for section, cls in typing.get_type_hints(Config).items():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if {int, float} & {hint, *typing.get_args(hint)}:
                assert "range" in f.metadata, f"{section}.{f.name}"
                assert getattr(cls(), f.name) is None or getattr(cls(), f.name) in f.metadata["range"]


def test_cli_refuses_a_nan_learning_rate_in_one_line(tmp_path, capsys):
    from resnetlab.cli import main

    assert main(["train", "--recipe", "cifar10_resnet20", "--out", str(tmp_path / "run"), "--lr", "nan"]) == 2
    err = capsys.readouterr().err
    assert err == "resnetlab train: error: config key optim.lr=nan is out of range: expected a finite number >= 0\n"
    assert not (tmp_path / "run").exists()
    assert main(["data", "--dataset", "synthetic", "--val-size", "-3"]) == 2
    assert "data.val_size=-3 is out of range" in capsys.readouterr().err


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe\x00bad", "bin.yaml: not a YAML text file (not UTF-8)"),
    (b"optim:\n  lr: \x01\n", "bin.yaml: not a YAML text file (character #x0001 at position 13)"),
    (b"optim:\n  lr: [0.1\n", "bin.yaml, line 3, column 1: not valid YAML: expected ',' or ']', but got '<stream end>' "
                              "(while parsing a flow sequence from line 2, column 7)"),
    # PyYAML keeps the last of two equal keys: the value a reader sees first would be silently ignored
    (b"optim:\n  lr: 0.1\n  lr: 0.2\n", "bin.yaml, line 3, column 3: not valid YAML: key 'lr' is given twice "
                                        "(first on line 2); keep one"),
    (b"optim:\n  1: 2\n  x: 3\n", "unknown config key optim.1; valid keys in optim: lr,"),  # was a TypeError
])
def test_recipe_files_that_are_not_yaml_text_are_refused_in_one_line(tmp_path, data, message):
    (tmp_path / "bin.yaml").write_bytes(data)
    with pytest.raises(UserError) as err:
        load_config(str(tmp_path / "bin.yaml"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_merged_key_may_be_overridden(tmp_path):
    # what a `<<:` merge brings in is meant to be overridden: not a duplicate key
    (tmp_path / "merge.yaml").write_text("optim:\n  <<: {lr: 0.2, momentum: 0.5}\n  lr: 0.3\n")
    merged = load_config(str(tmp_path / "merge.yaml")).optim
    assert (merged.lr, merged.momentum) == (0.3, 0.5)


def test_an_empty_recipe_name_is_refused_not_taken_for_the_defaults(tmp_path, capsys):
    from resnetlab.cli import main

    for name in ("", "  "):
        with pytest.raises(UserError, match="the recipe name is empty"):
            load_config(name)
    assert main(["train", "--recipe", "", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--print-config"]) == 2
    assert capsys.readouterr().err.startswith("resnetlab train: error: the recipe name is empty: give a shipped recipe")
    assert load_config(None) == Config()  # a library call without a recipe still means the defaults


def _alias_bomb(levels: int) -> str:
    value = "&b0 [1,1,1,1,1,1,1,1,1,1]"
    for i in range(1, levels):
        value = f"&b{i} [{value}," + ",".join([f"*b{i - 1}"] * 9) + "]"
    return value


@pytest.mark.parametrize("text, said", [
    ("optim:\n  lr: " + _alias_bomb(9) + "\n", "over 100,000 values once its aliases (*name) are expanded, or "
                                               "nested over 100 deep"),
    ("model:\n  kwargs: &k\n    self: *k\n", "an alias (*name) inside the value it names: it never ends"),
    ("optim:\n  lr: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
    ("optim:\n  lr: [" + "1," * 600_000 + "1]\n", "1,200,017 characters, over the 1,000,000 a recipe may have"),
], ids=["alias-bomb", "self-alias", "deep", "huge"])
def test_recipes_that_would_take_minutes_gigabytes_or_a_recursion_error_are_one_line(tmp_path, text, said):
    """A 600-byte alias bomb ran for minutes and GBs; a self-alias or deep nesting was a RecursionError."""
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        load_config(str(tmp_path / "r.yaml"))
    assert str(err.value) == f"{tmp_path / 'r.yaml'}: not valid YAML: {said}"


def test_aliases_of_a_reasonable_size_still_read():
    cfg = load_config("cifar10_resnet20", ["schedule.milestones=[&m 32000, 48000]"])
    assert cfg.schedule.milestones == [32000, 48000]


def test_a_long_base_chain_is_one_line_and_a_wrong_value_is_echoed_briefly(tmp_path):
    for i in range(40):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i + 1}.yaml\n" if i < 39 else "optim: {lr: 0.2}\n")
    with pytest.raises(UserError, match=r"^recipe `base:` chain of over 32 files \(.*c0.yaml -> .*c1.yaml -> \.\.\.\); "
                                        r"keep it short$"):
        load_config(str(tmp_path / "c0.yaml"))
    with pytest.raises(UserError) as err:
        load_config("cifar10_resnet20", ["optim.lr=" + "x" * 5000])
    assert str(err.value) == f"config key optim.lr: expected float, got '{'x' * 59}... (5,002 characters) (str)"


@pytest.mark.parametrize("override, expected", [
    ("optim.batch_size=010", ("optim", "batch_size", 10)),  # YAML 1.1: octal 8
    ("train.seed=0123", ("train", "seed", 123)),  # 83; --seed 0123 gave 123
    ("optim.batch_size=1_024", ("optim", "batch_size", 1024)),
    ("train.channels_last=true", ("train", "channels_last", "true")),  # the true/false switches stay words
])
def test_integers_read_as_written_and_switches_as_words(override, expected):
    section, key, value = expected
    assert getattr(getattr(load_config("cifar10_resnet20", [override]), section), key) == value


@pytest.mark.parametrize("override, said", [
    ("train.log_every=1:30", "config key train.log_every: expected int, got '1:30' (str)"),  # YAML 1.1: 90 (base 60)
    ("data.cache_dir=no", "config key data.cache_dir: expected str, got False (bool)"),  # a folder named "false"
    ("finetune.init=", "config key finetune.init is empty (an unset variable?): give weights, a checkpoint or a run "
                       "directory, or leave it out (null) to start from random weights"),  # trained from random weights
])
def test_values_yaml_would_reinterpret_or_an_empty_init_are_refused(override, said):
    with pytest.raises(UserError) as err:
        load_config("cifar10_resnet20", [override])
    assert str(err.value) == said


@pytest.mark.parametrize("override, said", [
    ("data.augment=cifra", "unknown data.augment 'cifra'; choose one of cifar, imagenet, rrc, none"),
    ("data.interpolation=nearest", "unknown data.interpolation 'nearest'; choose one of bilinear, bicubic"),
    ("train.precision=fp8", "unknown train.precision 'fp8'; choose one of auto, fp32, bf16, fp16"),
    ("train.device=tpu", "unknown train.device 'tpu'; use auto | cpu | cuda | cuda:N"),
    ("model.kwargs={bogus: 1}", "unknown argument(s) bogus for model 'resnet20'; valid: num_classes, in_chans, "
                                "shortcut, residual, stride_on, zero_init_residual"),
    ("model.name=resnet20.bogus", "unknown weights 'resnet20.bogus'; did you mean resnet20.akamaster_c10, "
                                  "resnet20.chenyaofo_c10, resnet20.chenyaofo_c100, resnet50.tv_in1k? (`resnetlab "
                                  "weights list` shows them all)"),
    ("model.name=resnet18.", "model.name 'resnet18.': nothing after the dot; name the model alone, or its published "
                             "weights (resnet18.tv_in1k)"),  # was "weights= takes a tag ..., got ''"
])
def test_print_config_refuses_what_the_run_would_refuse(override, said, capsys):
    """--print-config printed these (exit 0); a run refused them only once it used them (interpolation: never, until
    predict resized a large image after training)."""
    from resnetlab.cli import main

    assert main(["train", "--recipe", "cifar10_resnet20", "--print-config", "--set", override]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"resnetlab train: error: {said}\n"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "false\n", "0\n", "[]\n", '""\n'])
def test_an_empty_or_falsy_recipe_is_refused_not_read_as_the_defaults(tmp_path, text):
    """It ran the bare defaults, the paper's 64k-step CIFAR recipe."""
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=r"r.yaml( is empty: a recipe sets sections|: a recipe must be a mapping)"):
        load_config(str(tmp_path / "r.yaml"))


def test_recipe_names_that_are_almost_right_are_said_as_such(tmp_path):
    (tmp_path / "UP.YAML").write_text("optim:\n  lr: 0.2\n")
    assert load_config(str(tmp_path / "UP.YAML")).optim.lr == 0.2  # "not a .yaml file and not a shipped recipe"
    (tmp_path / "dir.yaml").mkdir()
    for name, said in ((str(tmp_path / "dir.yaml"), f"recipe {tmp_path / 'dir.yaml'} is a folder, not a file"),
                       ("cifar10_fast.yaml", "recipe file not found: cifar10_fast.yaml (the shipped recipe is named "
                                             "cifar10_fast, without .yaml)"),
                       ("https://example.com/r.yaml", "recipe 'https://example.com/r.yaml': recipes are read from "
                                                      "files, not URLs; download it first")):
        with pytest.raises(UserError) as err:
            load_config(name)
        assert str(err.value) == said


def test_a_mistyped_recipe_name_gets_the_closest_shipped_one():
    with pytest.raises(UserError, match=r"^unknown recipe 'cifar10_fats': not a \.yaml file and not a shipped recipe "
                                        r"\(did you mean cifar10_fast\?\); shipped recipes: cifar10_fast, "):
        load_config("cifar10_fats")


@pytest.mark.parametrize("body, said", [
    ("optim:\n  # lr: 0.1\n", "config section optim: is empty (are all its keys commented out?); give it keys, or "
                              "remove the line 'optim:'"),  # was "expected a mapping of keys, got None"
    ("optim: " + "x" * 400 + "\n", "config section optim: expected a mapping of keys, got 'xxxxxxxxxxxxxxxxxxxxxxxxx"),
])
def test_a_section_that_is_not_a_mapping_says_why(tmp_path, capsys, body, said):
    from resnetlab.cli import main

    (tmp_path / "r.yaml").write_text(body)
    assert main(["train", "--recipe", str(tmp_path / "r.yaml"), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnetlab train: error: {said}") and len(err) < 300


def test_a_new_image_size_keeps_the_recipes_evaluation_ratio_unless_eval_resize_is_given():
    """finetune --image-size 32 evaluated on the centre 32 px of images resized to 256: their middle eighth."""
    assert (load_config("finetune", ["data.image_size=32"]).data.eval_resize,
            load_config("finetune", ["data.image_size=160"]).data.eval_resize) == (37, 183)  # 224 of 256
    assert load_config("finetune", ["data.eval_resize=40", "data.image_size=32"]).data.eval_resize == 40
    assert load_config("finetune").data.eval_resize == 256
    assert load_config("cifar10_fast", ["data.image_size=64"]).data.eval_resize == 256  # unused by cifar augmentation
    # the ImageNet ratio, not the config's own pair: a CIFAR recipe's unused 256 for 32 made 224 into 1792
    assert load_config(None, ["data.augment=rrc", "data.image_size=224"]).data.eval_resize == 256
    assert load_config("cifar10_resnet20", ["data.augment=imagenet", "data.image_size=96"]).data.eval_resize == 110
    chosen = load_config("finetune", ["data.image_size=160", "data.eval_resize=183"])  # then a --set of the size
    assert apply_overrides(chosen, ["data.image_size=96"]).data.eval_resize == 110