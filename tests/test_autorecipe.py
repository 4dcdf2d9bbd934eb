"""The recipe `resnetlab train --data DIR --out RUN` chooses without --recipe: a pure function of
the dataset's and the machine's facts and of what the user set."""
import pytest
from PIL import Image

from resnetlab.autorecipe import IMAGENET_WEIGHTS, DataFacts, MachineFacts, choose
from resnetlab.config import load_config
from resnetlab.engine.schedules import schedule_warnings
from resnetlab.errors import UserError

LAPTOP, GPU_BOX = MachineFacts(cpus=2, gpu=False), MachineFacts(cpus=16, gpu=True)
ISSUE_PHOTOS = DataFacts("folder", train_images=140, num_classes=4, has_val=False, short_side=300, small=False)


def test_cifar10_gets_the_quick_start_recipe_unchanged():
    choice = choose(DataFacts("cifar10", 50000, 10, False, 32, True), LAPTOP)
    assert (choice.recipe, choice.overrides, choice.init) == ("cifar10_fast", (), None)
    assert "recipe cifar10_fast" in choice.line and "batch 256 (lr 0.4), 7 epochs of 175 steps, warm-up 250" in choice.line


def test_the_issue_s_140_photos_fine_tune_imagenet_weights_sized_to_the_data():
    choice = choose(ISSUE_PHOTOS, LAPTOP)
    # 28 held out (the recipe's stratified 20%), 112 left: batch 64 -> 16 for >= 4
    # steps per epoch (7), lr scaled by 16/64, epochs raised toward 300 steps (43) but at most 4 x 10, warm-up
    # at most a quarter of the 280 steps, one decoding worker of the two cores.
    assert choice.recipe == "finetune" and choice.init == IMAGENET_WEIGHTS
    assert dict(choice.overrides) == {"finetune.init": IMAGENET_WEIGHTS, "optim.batch_size": 16,
                                      "optim.lr": 0.0025, "schedule.epochs": 40, "schedule.warmup_steps": 70,
                                      "train.workers": 1}
    cfg = load_config(choice.recipe, choice.overrides)
    assert (cfg.data.image_size, cfg.data.eval_resize, cfg.data.normalize, cfg.model.name) == (224, 256, "imagenet",
                                                                                               "resnet18")
    assert schedule_warnings(cfg.schedule, 112 // 16) == []
    for words in ("140 photos in 4 classes", "fine-tuning resnet18.tv_in1k at 224 px", "batch 16 (lr 0.0025)",
                  "40 epochs of 7 steps", "20% of each class held out", "--recipe NAME or --set KEY=VALUE",
                  "--init none to train from scratch"):
        assert words in choice.line, words


@pytest.mark.parametrize("side, init, size", [(150, IMAGENET_WEIGHTS, 128), (90, IMAGENET_WEIGHTS, 64),
                                               (40 + 300, None, 128), (100, None, 96)])
def test_image_size_follows_small_photos_and_stays_small_from_scratch(side, init, size):
    data = DataFacts("folder", 140, 4, False, side, False)
    choice = choose(data, LAPTOP, {"finetune.init": init})
    cfg = load_config(choice.recipe, choice.overrides)
    assert (choice.recipe, cfg.data.image_size, cfg.data.eval_resize) == (
        "finetune" if init else "photos_scratch", size, round(size * 256 / 224))
    assert "finetune.init" not in dict(choice.overrides)  # the user's value is never overridden
    assert ("--init none" in choice.line) == bool(init)


def test_what_the_user_set_is_kept_and_the_rest_follows_it():
    choice = choose(ISSUE_PHOTOS, LAPTOP, {"optim.batch_size": 32, "train.workers": 0})
    chosen = dict(choice.overrides)
    assert "optim.batch_size" not in chosen and "train.workers" not in chosen
    assert chosen["optim.lr"] == 0.005 and chosen["schedule.epochs"] == 40  # 112 // 32 = 3 steps per epoch
    steps = choose(ISSUE_PHOTOS, LAPTOP, {"schedule.max_steps": 50, "schedule.epochs": None})
    assert "schedule.epochs" not in dict(steps.overrides) and dict(steps.overrides)["schedule.warmup_steps"] == 12
    assert "50 steps" in steps.line


def test_a_val_folder_a_big_folder_and_a_gpu_machine():
    with_val = dict(choose(DataFacts("folder", 140, 4, True, 300, False), LAPTOP).overrides)
    assert "data.val_size" not in with_val and with_val["optim.batch_size"] == 32  # 140 // 32 = 4 steps
    big = choose(DataFacts("folder", 20000, 50, False, 400, False), GPU_BOX)
    assert dict(big.overrides) == {"finetune.init": IMAGENET_WEIGHTS}  # the recipe fits: a fifth held out, batch 64,
    assert "8 decoding workers" in big.line                             # 250 steps x 10 epochs, 8 workers <= 15 cores
    one_core = dict(choose(ISSUE_PHOTOS, MachineFacts(1, False)).overrides)
    assert one_core["train.workers"] == 0


def test_tiny_and_cifar_sized_folders():
    tiny = dict(choose(DataFacts("folder", 10, 2, False, 300, False), LAPTOP).overrides)
    assert tiny["optim.batch_size"] == 2 and "data.val_size" not in tiny  # the recipe's 0.2: 8 left, 4 steps of 2
    small = choose(DataFacts("folder", 3000, 10, False, 64, True), LAPTOP)
    assert small.recipe == "cifar10_fast" and dict(small.overrides) == {
        "data.image_size": 64, "data.val_size": 0.2, "schedule.epochs": 28, "schedule.warmup_steps": 63}
    assert "train.workers" not in dict(small.overrides)  # in memory: nothing to decode


def test_schedule_warnings_for_a_warm_up_or_milestones_the_run_never_reaches():
    cfg = load_config("finetune", [("schedule.epochs", 2)])
    (warning,) = schedule_warnings(cfg.schedule, 7)
    assert warning.startswith("schedule.warmup_steps=100 is not shorter than the run: the run has 14 steps (7 per epoch)")
    paper = load_config("cifar10_resnet20", [("schedule.max_steps", 1000)])
    assert schedule_warnings(paper.schedule, 351) == [
        "schedule.milestones [32000, 48000] (steps): 2 of them at or after the last step, so the lr is never lowered "
        "there; the run has 1000 steps (351 per epoch)"]
    assert schedule_warnings(load_config("cifar10_fast").schedule, 175) == []


def test_one_image_per_class_trains_without_a_validation_split_and_says_so():
    # stratified_split never holds out a class's last image: 20% of this folder would hold out none and stop the run
    choice = choose(DataFacts("folder", 2, 2, False, 80, False, largest_class=1), LAPTOP, {"finetune.init": None})
    assert load_config(choice.recipe, choice.overrides).data.val_size == 0
    assert "validation on none (a single image per class" in choice.line
    two = choose(DataFacts("folder", 4, 2, False, 80, False, largest_class=2), LAPTOP, {"finetune.init": None})
    assert load_config(two.recipe, two.overrides).data.val_size == 0.2
    one = choose(DataFacts("folder", 2, 2, False, 80, False, largest_class=1), LAPTOP,
                 {"finetune.init": None, "schedule.epochs": 1})
    assert "1 epoch of 2 steps" in one.line


@pytest.mark.parametrize("given, message", [
    ({"optim.lr": "abc"}, "config key optim.lr: expected float, got 'abc' (str)"),
    ({"optim.lr": ""}, "config key optim.lr: expected float, got '' (str)"),
    ({"optim.batch_size": "abc"}, "config key optim.batch_size: expected int, got 'abc' (str)"),
    ({"schedule.max_steps": "abc"}, "config key schedule.max_steps: expected int, got 'abc' (str)"),
    ({"optim.batch_size": -4}, "config key optim.batch_size=-4 is out of range: expected an integer >= 1"),
    ({"schedule.epochs": -1}, "config key schedule.epochs=-1 is out of range: expected an integer >= 1"),
    ({"data.val_size": 1.5}, "config key data.val_size=1.5: a fraction must be in (0, 1)"),
])
def test_what_the_user_set_is_checked_by_the_config_before_anything_is_computed_from_it(given, message):
    # --set values arrive as YAML reads them: arithmetic on 'abc' was a traceback, and -4 became "batch -4 (lr ...)"
    with pytest.raises(UserError) as err:
        choose(ISSUE_PHOTOS, LAPTOP, given)
    assert str(err.value).startswith(message)


def test_a_whole_val_size_is_a_count_in_the_line_as_in_the_run():
    # The config reads data.val_size=2.0 as 2 images (whole floats are counts); the line said "200% of each class"
    # and sized the batch as if every image were held out (batch 1). 1.0, which reads as either, is refused.
    choice = choose(ISSUE_PHOTOS, LAPTOP, {"data.val_size": 2.0})
    assert "validation on 2 images held out" in choice.line and "batch 32 " in choice.line  # 138 // 32 = 4 steps
    assert load_config(choice.recipe, [*choice.overrides, ("data.val_size", 2.0)]).data.val_size == 2
    with pytest.raises(UserError, match=r"data.val_size=1.0: a count of 1 or the fraction 1"):
        choose(ISSUE_PHOTOS, LAPTOP, {"data.val_size": 1.0})


def test_a_linear_probe_is_announced_as_one_not_as_a_training_schedule():
    """With finetune.linear_probe the line told of batches, epochs and warm-up that a probe never runs."""
    choice = choose(ISSUE_PHOTOS, LAPTOP, {"finetune.linear_probe": True})
    assert choice.line == (
        "no --recipe given: 140 photos in 4 classes (shorter side ~300 px) -> recipe finetune as a linear probe: a "
        "logistic regression on the frozen features of resnet18.tv_in1k at 224 px, computed once, its L2 penalty "
        "chosen on 20% of each class held out. Change any of it with --recipe NAME or --set KEY=VALUE; the run's "
        "config.yaml holds every value")
    assert load_config(choice.recipe, [*choice.overrides, ("finetune.linear_probe", True)]).finetune.init == \
        IMAGENET_WEIGHTS


@pytest.fixture
def small_folder(tmp_path):
    """Three classes of four 32 px JPEGs: the automatic recipe is cifar10_fast, nothing to download."""
    for c, colour in enumerate(("red", "green", "blue")):
        (tmp_path / "small" / "train" / str(c)).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "small" / "train" / str(c) / f"{i}.jpg")
    return tmp_path / "small"


@pytest.mark.parametrize("flags, line", [
    (["--set", "optim.lr=abc"], "config key optim.lr: expected float, got 'abc' (str)"),
    (["--lr", "-1"], "config key optim.lr=-1.0 is out of range: expected a finite number >= 0"),
])
def test_the_cli_refuses_a_bad_value_in_one_line_and_writes_nothing(small_folder, tmp_path, capsys, flags, line):
    from resnetlab.cli import main

    out = tmp_path / "runs" / "x"
    assert main(["train", "--data", str(small_folder), "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err == f"resnetlab train: error: {line}\n"  # no recipe line with the bad value
    assert not out.exists()  # auto_recipe.json used to be written before the value was checked


@pytest.mark.parametrize("given, scales", [({"schedule.epochs": 3}, [0.5, 0.5]), ({"schedule.epochs": 1}, []),
                                           ({"schedule.max_steps": 300}, [0.5]), ({"schedule.epochs": 7}, None)])
def test_a_short_run_keeps_its_last_epoch_at_full_size(given, scales):
    """--epochs 3 kept cifar10_fast's six small-crop epochs: the run never trained or validated at 32 px."""
    choice = choose(DataFacts("cifar10", 50000, 10, False, 32, True), LAPTOP, given)
    assert dict(choice.overrides).get("data.progressive_scales") == scales  # 175 steps an epoch: 300 steps are 2
    cfg = load_config(choice.recipe, [*choice.overrides, *given.items()])
    assert cfg.data.progressive_scales == (scales if scales is not None else [0.5, 0.5, 0.5, 0.5, 0.625, 0.75])


def test_with_skip_bad_the_recipe_is_sized_for_the_readable_images(small_folder):
    """300 unreadable files beside 12 images sized the batch, steps and warm-up for 312 (the run then had
    fewer steps than the recipe line said, or was refused: fewer images than the batch it chose)."""
    from resnetlab.data.survey import survey

    clean = survey("folder", small_folder)
    for i in range(300):
        (small_folder / "train" / "1" / f"junk{i}.jpg").write_bytes(b"not an image")
    assert survey("folder", small_folder, skip_bad=True) == clean
    assert survey("folder", small_folder).train_images == 312  # without skip_bad the run refuses the first one



def test_with_skip_bad_a_large_folder_is_counted_from_a_spread_sample_of_headers(small_folder, monkeypatch):
    """Every header was read once here and again as the data was built: minutes on a large folder."""
    from resnetlab.data import survey as survey_module

    for i in range(12):
        (small_folder / "train" / "2" / f"junk{i}.jpg").write_bytes(b"not an image")
    exact = survey_module.survey("folder", small_folder, skip_bad=True)
    assert exact.train_images == 12 and exact.largest_class == 4
    read = []
    monkeypatch.setattr(survey_module, "HEADERS_READ", 8)  # 24 files: every third header read
    monkeypatch.setattr(survey_module, "unreadable_headers",
                        lambda paths: read.extend(paths) or exact_bad(paths))
    estimated = survey_module.survey("folder", small_folder, skip_bad=True)
    assert len(read) == 8 and estimated.train_images == 12 and estimated.largest_class == 8


def exact_bad(paths):
    from resnetlab.data.decode import unreadable_headers
    return unreadable_headers(paths)


def test_a_large_folder_of_small_images_holds_out_each_class_s_share():
    """Past 25k small images the recipe's 5000 was kept as a count, drawn over all classes at once (not
    stratified, as the README says): a rare class could lose every image to validation."""
    choice = choose(DataFacts("folder", 30000, 10, False, 32, True), LAPTOP)
    assert dict(choice.overrides)["data.val_size"] == 0.16667 and "16.7% of each class held out" in choice.line
    assert load_config(choice.recipe, choice.overrides).data.val_size == 0.16667


@pytest.mark.parametrize("images", [25001, 29973, 30000, 60000, 123457, 10**6])
def test_the_share_a_large_folder_holds_out_is_the_recipe_s_5000_images(images):
    """The share was rounded to 3 digits: 30,000 images held out 5,010, 60,000 held out 4,998."""
    import torch

    from resnetlab.autorecipe import held_out
    from resnetlab.data.sampling import stratified_split

    val_size = dict(choose(DataFacts("folder", images, 10, False, 32, True), LAPTOP).overrides)["data.val_size"]
    labels = torch.arange(images) % 10
    assert held_out(images, val_size) == 5000 and len(stratified_split(labels, val_size, seed=0)[1]) == 5000
    assert "data.val_size" not in dict(choose(DataFacts("cifar10", 50000, 10, False, 32, True), LAPTOP).overrides)


def test_weights_given_for_small_images_are_fine_tuned_as_a_photo_folder_s():
    """--init WEIGHTS on 32 px images kept cifar10_fast (its resnet20 refused ImageNet weights; with --model resnet18
    it trained with a CIFAR mean image, CIFAR augmentation and the full lr on the backbone) and said "from scratch"."""
    small = DataFacts("folder", 90, 3, False, 32, True)
    choice = choose(small, LAPTOP, {"finetune.init": "weights.pth"})
    cfg = load_config(choice.recipe, [*choice.overrides, ("finetune.init", "weights.pth")])
    assert choice.recipe == "finetune" and (cfg.finetune.init, cfg.data.image_size) == ("weights.pth", 64)
    assert (cfg.model.name, cfg.data.normalize, cfg.finetune.backbone_lr_mult) == ("resnet18", "imagenet", 0.1)
    assert "fine-tuning weights.pth at 64 px" in choice.line and "from scratch" not in choice.line.split("(e.g.")[0]
    scratch = choose(small, LAPTOP, {"finetune.init": None})
    assert scratch.recipe == "cifar10_fast" and "from scratch at 32 px" in scratch.line


def test_weights_of_a_small_image_net_go_on_as_they_trained_and_the_run_trains_the_init_s_model():
    """The README's advice after a data change, `train --data DIR --init RUN --out NEW`, of a cifar10_fast run:
    the automatic recipe must not fine-tune RUN's resnet20 as ImageNet weights. Published weights of another
    net (resnet50.tv2_in1k) are that net's: the run builds it rather than refusing them for resnet18."""
    from resnetlab.autorecipe import InitModel

    small = DataFacts("folder", 90, 3, False, 32, True)
    again = choose(small, LAPTOP, {"finetune.init": "runs/a"}, InitModel("resnet56", True))
    assert again.recipe == "cifar10_fast" and dict(again.overrides)["model.name"] == "resnet56"
    assert "fine-tuning runs/a at 32 px" in again.line
    imagenet = choose(ISSUE_PHOTOS, LAPTOP, {"finetune.init": "resnet50.tv2_in1k"}, InitModel("resnet50", False))
    assert imagenet.recipe == "finetune" and dict(imagenet.overrides)["model.name"] == "resnet50"
    assert "model.name" not in dict(choose(ISSUE_PHOTOS, LAPTOP, {}, InitModel("resnet18", False)).overrides)
    paper = choose(ISSUE_PHOTOS, LAPTOP, {"finetune.init": "r50"}, InitModel("resnet50", False, (("stride_on", "1x1"),)))
    assert dict(paper.overrides)["model.kwargs"] == {"stride_on": "1x1"}  # built as the weights were trained


def test_the_model_of_the_init_weights_is_read_where_it_can_be_told(small_folder, tmp_path):
    import torch

    from resnetlab.autorecipe import InitModel
    from resnetlab.cli import main
    from resnetlab.cli.train_auto import init_model
    from resnetlab.models import create_model

    assert main(["train", "--data", str(small_folder), "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    assert (init_model(str(tmp_path / "run")).name, init_model(str(tmp_path / "run")).small) == ("resnet20", True)
    assert init_model(IMAGENET_WEIGHTS).name == "resnet18" and not init_model(IMAGENET_WEIGHTS).small
    assert init_model(str(tmp_path / "nothere.pt")) is None
    # a plain file whose tensors fit one registered network alone is that network's; resnet20's with
    # parameter-free shortcuts fit plain20 as well, so it is not told (nor a file of other names)
    for name, kwargs, told in (("resnet56", {"shortcut": "B"}, ("resnet56", True, (("shortcut", "B"),))),
                               ("resnet18", {}, ("resnet18", False, ())), ("resnet20", {}, None)):
        torch.save(create_model(name, num_classes=7, **kwargs).state_dict(), tmp_path / "plain.pth")
        assert init_model(str(tmp_path / "plain.pth")) == (told and InitModel(*told)), name
    torch.save({"encoder.weight": torch.ones(3, 3)}, tmp_path / "plain.pth")
    assert init_model(str(tmp_path / "plain.pth")) is None
