"""Every script in benchmarks/ still runs after a change to the library it drives: its --help
(argparse) prints its usage and exits 0, which needs every import of the script to resolve."""
import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


def test_the_benchmark_scripts_are_found():
    assert {"bench_train.py", "bench_infer.py", "fused_bn_accuracy.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
