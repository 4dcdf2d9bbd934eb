"""The command line's conventions: --version, "did you mean", shortcut flags, --print-config,
one-line answers to bad devices and to changes on --resume."""
import pytest
import yaml

import resnetlab
from resnetlab import cli
from resnetlab.config import config_from_dict, config_to_yaml, load_config


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


def test_model_and_image_size_flags_and_print_config_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, _ = run_cli(capsys, "train", "--recipe", "cifar10_resnet20", "--model", "resnet32",
                               "--image-size", "40", "--out", str(out), "--print-config")
    assert code == 0 and not out.exists()
    cfg = config_from_dict(yaml.safe_load(printed))
    assert (cfg.model.name, cfg.data.image_size) == ("resnet32", 40)
    assert printed == config_to_yaml(load_config("cifar10_resnet20", [("model.name", "resnet32"),
                                                                       ("data.image_size", 40)]))
