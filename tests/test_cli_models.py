"""`resnetlab models`: the table and the JSON agree with the registry and the paper."""
import json
import subprocess
import sys

from resnetlab.cli import main


def test_models_json_lists_every_model_with_counts(capsys):
    assert main(["models", "--json", "--stride-on", "1x1"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    from resnetlab import list_models

    assert set(rows) == set(list_models())
    assert rows["resnet56"]["params"] == 853_018 and rows["resnet56"]["input_size"] == 32
    assert round(rows["resnet50"]["macs"] / 1e9, 1) == 3.9  # 3.86e9: Table 1's "3.8"
    assert rows["resnet152"]["input_size"] == 224 and rows["plain34"]["residual"] is False


def test_models_table_for_one_family(capsys):
    assert main(["models", "--family", "cifar"]) == 0
    out = capsys.readouterr().out
    assert "resnet110" in out and "1.73M" in out and "resnet50" not in out


def test_console_entry_point_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "resnetlab", "models", "--family", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("resnetlab models: error: unknown value for --family 'nope'; choose from imagenet, cifar "
                           "(see resnetlab models --help)\n")
