"""YAML merge keys that double with each line (`l2: &l2 {<<: [*l1, *l1]}`): PyYAML copies merged
pairs while it builds the value, before load_yaml's count of values could see them. 40 such lines
are 2^40 pairs: without the bound the commands below would not end (24 lines took 18 s and 645 MB),
so each runs in a subprocess with a timeout; with it, each is refused in one line."""
import subprocess
import sys

from resnetlab.config import load_yaml

LINES = ["l0: &l0 {a: 1, b: 2}"] + [f"l{i}: &l{i} {{<<: [*l{i - 1}, *l{i - 1}]}}" for i in range(1, 40)]
REFUSED = "its merge keys (<<) copy over 100,000 values; merge each mapping once"


def resnetlab(*argv):
    return subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True, timeout=60)


def assert_one_line(done, *words, loaded=None):
    """Exit 2 with one line holding `words`. PyYAML 6.0.4 and later merge each mapping's keys once
    themselves (no explosion): the bomb then loads as a small value, and what the command says of it
    (`loaded`) replaces the bound's REFUSED."""
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    if loaded is not None and REFUSED not in done.stderr:
        words = [loaded]
    assert all(w in done.stderr for w in words), done.stderr


def test_a_recipe_whose_merges_double_each_line_is_one_line(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("model:\n  name: resnet20\nx:\n" + "".join(f"  {line}\n" for line in LINES))
    assert_one_line(resnetlab("train", "--recipe", str(recipe), "--print-config"), str(recipe), REFUSED,
                    loaded="unknown config section 'x'")


def test_a_set_value_whose_merges_double_is_one_line():
    done = resnetlab("train", "--recipe", "cifar10_resnet20", "--print-config",
                     "--set", "model.kwargs={" + ", ".join(LINES) + "}")
    assert_one_line(done)  # text (the YAML refused), which is no dict; or (deduplicated) a dict of unknown arguments
    assert "config key model.kwargs: expected dict" in done.stderr or "unknown argument(s) l0, l1" in done.stderr


def test_a_run_config_whose_merges_double_is_one_line_and_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = "model:\n  name: resnet20\nx:\n" + "".join(f"  {line}\n" for line in LINES)
    (run / "config.yaml").write_text(text)
    assert_one_line(resnetlab("train", "--resume", str(run), "--max-steps", "1"), "config.yaml", REFUSED,
                    loaded="unknown config section 'x'")
    assert (run / "config.yaml").read_text() == text and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_report_and_experiment_read_a_bomb_in_a_run_config_in_one_line(tmp_path):
    """report (tables.load_run) and experiment (run_status) read config.yaml with yaml.safe_load, unbounded."""
    from resnetlab.config import Config
    from resnetlab.reports.experiments import run_status

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: resnet20\nx:\n" + "".join(f"  {line}\n" for line in LINES))
    assert_one_line(resnetlab("report", str(run), "--out", str(tmp_path / "rep")), "config.yaml", REFUSED,
                    loaded="unknown config section 'x'")
    assert run_status(run, Config()) == "conflict"  # not this experiment's run: said so, as for any other config


def test_merges_as_recipes_write_them_still_load():
    text = ("base: &base {lr: 0.1, weight_decay: 1e-4}\nfast: {<<: *base, lr: 0.2}\n"
            "both: {<<: [*base, {momentum: 0.9}]}\nitself: &self {<<: *self, a: 1}\n")
    assert load_yaml(text) == {"base": {"lr": 0.1, "weight_decay": 1e-4}, "fast": {"lr": 0.2, "weight_decay": 1e-4},
                               "both": {"lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9}, "itself": {"a": 1}}
    # merges that copy under the bound in all: 15 lines copy 2 + 4 + ... + 2^15 = 65,534 pairs
    assert len(load_yaml("x:\n" + "".join(f"  {line}\n" for line in LINES[:15]))["x"]) == 15
