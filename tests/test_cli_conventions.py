"""The command line's conventions: --version, "did you mean", shortcut flags, --print-config,
one-line answers to bad devices and to changes on --resume."""
import PIL.Image
import shutil

import pytest
import torch
import yaml

import resnetlab
from resnetlab import cli
from resnetlab.cli.arguments import INFERENCE_AUTO, PRECISION_AUTO
from resnetlab.config import config_from_dict, config_to_dict, config_to_yaml, load_config
from resnetlab.engine import load_checkpoint
from resnetlab.engine.datadir import data_overrides
from resnetlab.engine.finetune import load_init_weights
from resnetlab.errors import UserError
from resnetlab.models import create_model
from test_engine_train import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(recipe file, run directory) of a finished 4-step ResNet-8 run on synthetic data."""
    root = tmp_path_factory.mktemp("tiny")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 4)))))
    assert cli.main(["train", "--recipe", str(recipe), "--out", str(root / "run")]) == 0
    return str(recipe), root / "run"


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `resnetlab ARGV` run in-process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out) == (0, f"resnetlab {resnetlab.__version__}\n")


def test_mistyped_command_gets_a_suggestion(capsys):
    code, _, err = run_cli(capsys, "trian")
    assert code == 2
    assert err.splitlines() == ["resnetlab: error: unknown command 'trian'; did you mean train? (see resnetlab --help)"]


def test_mistyped_flag_gets_a_suggestion_not_an_abbreviation(capsys):
    code, _, err = run_cli(capsys, "train", "--epoch", "3")
    assert code == 2
    assert err.splitlines() == ["resnetlab train: error: unrecognized argument --epoch; did you mean --epochs? "
                                "(see resnetlab train --help)"]


def test_mistyped_choice_and_nested_command(capsys):
    code, _, err = run_cli(capsys, "train", "--precision", "bf61")
    assert code == 2 and "unknown value for --precision 'bf61'; did you mean bf16?" in err
    code, _, err = run_cli(capsys, "weights", "lsit")
    assert code == 2 and "unknown command 'lsit'; did you mean list?" in err
    code, _, err = run_cli(capsys, "weights", "list", "--nothing-like-it")
    assert code == 2 and err.splitlines() == [
        "resnetlab weights list: error: unrecognized argument --nothing-like-it (see resnetlab weights list --help)"]


def test_a_file_named_like_an_option_gets_told_how_to_pass_it(tmp_path, monkeypatch, capsys):
    """`predict RUN -x.jpg` said only that an image was required (or that -x.jpg was an unknown flag)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-x.jpg").write_bytes(b"")
    hint = "; -x.jpg is a file: pass it as ./-x.jpg, or after -- (see resnetlab predict --help)"
    code, _, err = run_cli(capsys, "predict", "RUN", "-x.jpg")
    assert code == 2 and err.splitlines() == [f"resnetlab predict: error: the following arguments are required: "
                                              f"IMAGE_OR_FOLDER{hint}"]
    code, _, err = run_cli(capsys, "predict", "RUN", "a.jpg", "-x.jpg")
    assert code == 2 and err.splitlines() == [f"resnetlab predict: error: unrecognized argument -x.jpg{hint}"]
    code, _, err = run_cli(capsys, "predict", "RUN", "--topk", "x", "--", "-x.jpg")  # passed as advised: no hint
    assert code == 2 and "-x.jpg is a file" not in err
    code, _, err = run_cli(capsys, "predict", "RUN", "a.jpg", "-y.jpg")  # no such file: no hint
    assert code == 2 and err.splitlines() == ["resnetlab predict: error: unrecognized argument -y.jpg "
                                              "(see resnetlab predict --help)"]


def test_model_and_image_size_flags_and_print_config_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, _ = run_cli(capsys, "train", "--recipe", "cifar10_resnet20", "--model", "resnet32",
                               "--image-size", "40", "--out", str(out), "--print-config")
    assert code == 0 and not out.exists()
    cfg = config_from_dict(yaml.safe_load(printed))
    assert (cfg.model.name, cfg.data.image_size) == ("resnet32", 40)
    assert printed == config_to_yaml(load_config("cifar10_resnet20", [("model.name", "resnet32"),
                                                                       ("data.image_size", 40)]))


def test_init_from_a_run_directory_means_its_best_checkpoint(tiny_run):
    _, run = tiny_run
    model = create_model("resnet8", num_classes=4)
    assert load_init_weights(model, str(run), "resnet8").skipped == []
    best = load_checkpoint(run / "checkpoints" / "best.pt").artifact.weights
    assert all(torch.equal(value, best[key]) for key, value in model.state_dict().items())


def test_init_from_a_run_of_another_model_says_so_in_one_line(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    with pytest.raises(UserError, match=f"^{run} holds a resnet8; this run trains resnet20: set model.name=resnet8"):
        load_init_weights(create_model("resnet20", num_classes=4), str(run), "resnet20")
    recipe, _ = tiny_run
    code, _, err = run_cli(capsys, "train", "--recipe", recipe, "--model", "resnet20", "--init", str(run),
                           "--out", str(tmp_path / "other"))
    assert code == 2 and err.splitlines() == [
        f"resnetlab train: error: {run} holds a resnet8; this run trains resnet20: set --model resnet8 to "
        "fine-tune it, or choose weights of a resnet20"]


@pytest.mark.parametrize("device, words", [
    ("mps", "device 'mps' is not one resnetlab runs on; use auto | cpu | cuda | cuda:N"),
    ("0", "device '0' is not one resnetlab runs on; for a GPU write cuda:0; use auto | cpu | cuda | cuda:N"),
    ("gpu", "device 'gpu' is not one resnetlab runs on; use auto | cpu | cuda | cuda:N"),
])
def test_unknown_devices_get_one_line_naming_the_accepted_forms(tiny_run, tmp_path, capsys, device, words):
    recipe, run = tiny_run
    image = tmp_path / "a.png"
    PIL.Image.new("RGB", (16, 16)).save(image)
    for command, argv in (("train", ["--recipe", recipe, "--out", str(tmp_path / "r")]), ("eval", [str(run)]),
                          ("predict", [str(run), str(image)])):
        code, _, err = run_cli(capsys, command, *argv, "--device", device)
        assert (code, err.splitlines()) == (2, [f"resnetlab {command}: error: {words}"])


def test_predict_uses_and_states_the_automatic_precision_of_train_and_eval(tiny_run, capsys):
    from resnetlab.engine.runtime import resolve_precision
    from resnetlab.inference.predictor import Predictor

    auto = Predictor.from_checkpoint(str(tiny_run[1]), device="cpu").precision
    assert auto == resolve_precision("auto", torch.device("cpu"))
    for command, text in (("train", PRECISION_AUTO), ("eval", INFERENCE_AUTO), ("predict", INFERENCE_AUTO),
                          ("embed", INFERENCE_AUTO)):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and text in " ".join(out.split())


def test_data_root_is_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ("data.root", str(tmp_path / "imgs")) in data_overrides("imgs", "folder")
    assert ("data.root", str(tmp_path / "imgs")) in data_overrides("./imgs/", "folder")


@pytest.mark.parametrize("argv, change", [
    (["--batch-size", "8"], "optim.batch_size: 16 -> 8"),
    (["--set", "data.image_size=12"], "data.image_size: 16 -> 12"),
])
def test_resume_refuses_a_new_batch_size_or_data(tiny_run, capsys, argv, change):
    _, run = tiny_run
    before = (run / "config.yaml").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", str(run), *argv)
    assert code == 2 and err.splitlines() == [
        f"resnetlab train: error: --resume {run} cannot change {change}: the position in the data depends on it, so "
        f"the run would not continue exactly; start a new run from its weights instead (--init {run} --out NEW_RUN)"]
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("argv, change, why", [
    (["--seed", "5"], "train.seed: 0 -> 5", "the shuffle and the validation hold-out follow from the seed"),
    (["--set", "finetune.freeze_bn=true"], "finetune.freeze_bn: False -> True",
     "the network and what of it trains come from the run's checkpoint"),
])
def test_resume_refuses_a_new_seed_or_fine_tuning(tiny_run, capsys, argv, change, why):
    _, run = tiny_run
    before = (run / "config.yaml").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "6", *argv)
    assert code == 2 and err.splitlines() == [
        f"resnetlab train: error: --resume {run} cannot change {change}: {why}, so the run would not continue exactly; "
        f"start a new run from its weights instead (--init {run} --out NEW_RUN)"]
    assert (run / "config.yaml").read_text() == before


def test_resume_refuses_another_model_and_init(tiny_run, capsys):
    _, run = tiny_run
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--model", "resnet20")
    assert code == 2 and err.splitlines() == [
        f"resnetlab train: error: --resume {run} cannot change model.name: 'resnet8' -> 'resnet20': the network and "
        "what of it trains come from the run's checkpoint, so the run would not continue exactly; start a new run "
        "(--out NEW_RUN)"]
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--init", str(run))
    assert code == 2 and err.splitlines() == [
        f"resnetlab train: error: --resume continues from the run's own checkpoint; drop --init {run} (to start a new "
        f"run from those weights: --init {run} --out NEW_RUN)"]


def test_resume_with_other_values_says_they_apply_from_here(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "5", "--set", "optim.momentum=0.5",
                           "--workers", "0")
    assert code == 0 and [line for line in err.splitlines() if "warning" in line] == [
        "resnetlab train: warning: --resume with a new schedule (schedule.max_steps: 4 -> 5): the schedule is "
        "recomputed from the current step and with new values (optim.momentum: 0.9 -> 0.5): they apply from the "
        "current step on, so the run is no longer the one an uninterrupted run would be"]
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.step == 5


def test_resume_with_a_new_schedule_says_so_and_continues(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "6", "--lr", "0.05")
    assert code == 0
    assert [line for line in err.splitlines() if "warning" in line] == [
        "resnetlab train: warning: --resume with a new schedule (optim.lr: 0.1 -> 0.05; schedule.max_steps: 4 -> 6): "
        "the schedule is recomputed from the current step"]
    assert load_checkpoint(run / "checkpoints" / "last.pt").training.step == 6


def test_a_relative_data_root_from_a_recipe_or_set_is_stored_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: cifar10_fast\ndata:\n  root: photos/cifar\n")
    assert cli.main(["train", "--recipe", str(recipe), "--out", "r", "--print-config"]) == 0
    assert f"root: {tmp_path / 'photos' / 'cifar'}\n" in capsys.readouterr().out
    assert cli.main(["train", "--recipe", "cifar10_fast", "--set", "data.root=../elsewhere", "--print-config"]) == 0
    assert f"root: {(tmp_path / '..' / 'elsewhere')}\n" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["eval", "RUN_DIR"], ["bench"]])
def test_batch_size_zero_is_refused_not_taken_as_the_default(command, capsys):
    with pytest.raises(SystemExit) as code:
        cli.main([*command, "--batch-size", "0"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "argument --batch-size: must be at least 1, got 0" in err and err.count("\n") == 1


def test_the_cifar_download_hint_is_each_commands_own_option(tmp_path, capsys):
    """`train` has no --download flag: its hint is the config key through --set; `data` has the flag."""
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--recipe", "cifar10_resnet20", "--data", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "run"))
    assert code == 2 and err.endswith("place the archive there or pass --set data.download=true\n")
    code, _, err = run_cli(capsys, "data", str(tmp_path / "empty"), "--dataset", "cifar10")
    assert code == 2 and err.endswith("place the archive there or pass --download\n")
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_run_without_last_pt_but_with_best_pt_and_an_empty_config(tiny_run, tmp_path, capsys):
    """Both started the run again from step 0: over its best.pt and metrics, or with the defaults' CIFAR-10."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    (run / "checkpoints" / "last.pt").unlink()
    best = (run / "checkpoints" / "best.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and err == (
        f"resnetlab train: error: --resume {run}: checkpoints/last.pt is missing but best.pt is there, so the run got "
        "past its first checkpoint; starting it again would replace best.pt and its metrics. Put last.pt back, or start "
        f"a new run from its weights (--init {run} --out NEW_RUN)\n")
    assert (run / "checkpoints" / "best.pt").read_bytes() == best
    (run / "config.yaml").write_text("")
    code, _, err = run_cli(capsys, "train", "--resume", str(run))
    assert code == 2 and err == f"resnetlab train: error: --resume {run}: an empty config.yaml there; is it a run directory?\n"


def test_data_given_with_a_synthetic_recipe_is_said_to_be_unread(tiny_run, tmp_path, capsys):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", "--recipe", tiny_run[0], "--data", str(tmp_path / "photos"), "--out",
                           str(tmp_path / "run"), "--print-config")
    assert code == 0 and err == (f"resnetlab train: warning: --data {tmp_path / 'photos'} is not read: data.dataset is "
                                 "synthetic (generated images); for the folder, use a recipe of real data or --set "
                                 "data.dataset=folder\n")


def test_data_and_report_name_a_file_given_as_their_folder_without_a_flag_they_lack(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text("base: cifar10_fast\n")
    code, _, err = run_cli(capsys, "data", str(tmp_path / "recipe.yaml"))
    assert code == 2 and err.startswith(f"resnetlab data: error: {tmp_path / 'recipe.yaml'}: a file, not a folder")
    code, _, err = run_cli(capsys, "report", str(tmp_path / "recipe.yaml"))
    assert code == 2 and err == f"resnetlab report: error: {tmp_path / 'recipe.yaml'}: a file, not a run directory\n"


@pytest.mark.parametrize("argv", [["train", "--data", "d", "--out", " "], ["report", "run", "--out", ""],
                                  ["eval", "run", "--data", "  "], ["train", "--resume", ""]])
def test_a_blank_path_is_refused_in_one_line(argv, capsys):
    """`--out " "` made and wrote a folder named by a space."""
    from resnetlab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is blank (an unset variable?): give a folder name" in err
