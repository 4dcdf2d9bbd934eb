"""The data geometry that follows data.image_size (config/geometry.py): eval_resize, resolved the
same whatever the order or grouping of the overrides that set the size and the augmentation."""
import warnings

import pytest
import yaml

from resnetlab.config import DataConfig, apply_overrides, load_config
from resnetlab.engine.setup import check_choices
from resnetlab.errors import ResnetlabWarning, UserError


def _printed(capsys, *args):
    from resnetlab.cli import main

    assert main(["train", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)["data"]


@pytest.mark.parametrize("recipe", ["cifar10_resnet20", "cifar10_fast", None])
def test_eval_resize_follows_the_size_and_augmentation_in_any_order(recipe):
    """--image-size is applied before --set: `--image-size 64 --set data.augment=rrc` kept 256 (a 25% crop)."""
    together = load_config(recipe, ["data.image_size=64", "data.augment=rrc"]).data.eval_resize
    apart = apply_overrides(load_config(recipe, ["data.image_size=64"]), ["data.augment=rrc"]).data.eval_resize
    reverse = apply_overrides(load_config(recipe, ["data.augment=rrc"]), ["data.image_size=64"]).data.eval_resize
    assert together == apart == reverse == 73
    assert load_config(recipe, ["data.augment=imagenet"]).data.eval_resize == 37  # the recipe's 32 px: 32 of 37


def test_the_command_line_resolves_eval_resize_after_every_override(capsys):
    assert _printed(capsys, "--recipe", "cifar10_resnet20", "--set", "data.augment=rrc")["eval_resize"] == 37
    data = _printed(capsys, "--recipe", "cifar10_resnet20", "--image-size", "64", "--set", "data.augment=rrc")
    assert data["eval_resize"] == 73
    assert _printed(capsys, "--recipe", "imagenet_resnet18", "--image-size", "128")["eval_resize"] == 146


def test_a_given_eval_resize_is_kept_and_a_recipe_file_without_one_follows(tmp_path):
    assert load_config("cifar10_resnet20", ["data.augment=rrc", "data.eval_resize=48"]).data.eval_resize == 48
    given = apply_overrides(load_config("photos_scratch", ["data.eval_resize=160"]), ["data.image_size=96"])
    assert given.data.eval_resize == 160  # not the ImageNet ratio of the old size: the user's, kept
    (tmp_path / "r.yaml").write_text("base: cifar10_resnet20\ndata:\n  augment: rrc\n  image_size: 64\n")
    assert load_config(str(tmp_path / "r.yaml")).data.eval_resize == 73
    assert DataConfig(augment="imagenet", image_size=96).eval_resize == 110
    assert DataConfig(image_size=96).eval_resize == 256  # cifar augmentation: unused, as before
    assert load_config("imagenet_resnet18", ["data.eval_resize=null", "data.image_size=160"]).data.eval_resize == 183


def test_an_inconsistent_explicit_eval_resize_is_refused_or_warned_in_one_line():
    with pytest.raises(UserError, match="below data.image_size"):
        check_choices(load_config("imagenet_resnet18", ["data.eval_resize=200"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_choices(load_config("cifar10_resnet20", ["data.augment=rrc", "data.eval_resize=256"]))
        check_choices(load_config("imagenet_resnet18"))
    said = [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning)]
    assert len(said) == 1 and "covers 12% of each image's shorter side" in said[0] and "\n" not in said[0]


def test_the_scale_augmentation_range_follows_the_size_as_the_papers_256_480_at_224(capsys):
    """At 64 px the paper's [256, 480] made training crops of 13-25% of the shorter side (eval: 88%)."""
    ranges = {s: load_config("imagenet_resnet18", [("data.image_size", s)]).data for s in (32, 64, 128, 224)}
    assert {s: (d.scale_min, d.scale_max) for s, d in ranges.items()} == {
        32: (37, 69), 64: (73, 137), 128: (146, 274), 224: (256, 480)}
    apart = apply_overrides(load_config("cifar10_resnet20", ["data.image_size=64"]), ["data.augment=imagenet"]).data
    assert (apart.scale_min, apart.scale_max) == (73, 137)
    data = _printed(capsys, "--recipe", "cifar10_resnet20", "--set", "data.augment=imagenet")
    assert (data["scale_min"], data["scale_max"]) == (37, 69)  # CIFAR's 32 px: windows of 15-28 px, not 2-4
    kept = load_config("imagenet_resnet18", ["data.scale_min=80", "data.scale_max=100", "data.image_size=64"]).data
    assert (kept.scale_min, kept.scale_max) == (80, 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explicit = ["data.image_size=64", "data.scale_min=256", "data.scale_max=480"]
        check_choices(load_config("imagenet_resnet18", explicit))
    said = [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning)]
    assert len(said) == 1 and "training crops cover 13%-25%" in said[0]


def test_a_recipe_built_on_a_shipped_one_follows_its_image_size(tmp_path):
    """imagenet_resnet18 and photos_scratch wrote eval_resize out (256, 146): a recipe with `base: imagenet_resnet18`
    and image_size 112 kept 256 (a 44% crop) while its scale range followed to 128-240."""
    from resnetlab.config import load_config

    (tmp_path / "child.yaml").write_text("base: imagenet_resnet18\ndata:\n  image_size: 112\n")
    data = load_config(str(tmp_path / "child.yaml")).data
    assert (data.eval_resize, data.scale_min, data.scale_max) == (128, 128, 240)
    assert (load_config("imagenet_resnet18").data.eval_resize, load_config("photos_scratch").data.eval_resize) == (256, 146)
