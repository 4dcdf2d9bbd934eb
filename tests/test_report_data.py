"""What a report pools and how it says it: runs on other data are other configs, while the same
images at another path pool; Table 6's params of the net each run built, its paper column only for
the paper's nets; seeds that stopped at different steps; numbers a diverged run prints."""
import json
import shutil
import warnings

import pytest
import yaml

from resnetlab import create_model
from resnetlab.data.fingerprints import fingerprint
from resnetlab.errors import ResnetlabWarning
from resnetlab.reports import plots, table6, tables
from resnetlab.reports.report import write_report
from test_report import make_run


def image_folder(path, sizes=(10, 20, 30)):
    """A folder dataset's train/ and test/ splits, files of the given sizes."""
    for split in ("train", "test"):
        for i, size in enumerate(sizes):
            (path / split / "cat").mkdir(parents=True, exist_ok=True)
            (path / split / "cat" / f"{i}.jpg").write_bytes(b"x" * size)
    return path


def on_data(run, data):
    """Make `run` a run on the folder `data`: its config's data.root and the data.json training writes."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(dataset="folder", root=str(data))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    prints = {split: fingerprint(sorted(map(str, (data / split).rglob("*.jpg"))), data) for split in ("train", "test")}
    (run / "data.json").write_text(json.dumps({"dataset": "folder", "root": str(data), "fingerprints": prints}))
    return run


def groups_of(*dirs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = tables.group_runs([tables.load_run(d) for d in dirs])
    return groups, [str(w.message) for w in caught if issubclass(w.category, ResnetlabWarning)]


def test_runs_on_other_data_are_other_configs_never_copies_or_seeds(tmp_path):
    small, other = image_folder(tmp_path / "small"), image_folder(tmp_path / "other", sizes=(11, 20, 30))
    r1 = on_data(make_run(tmp_path / "runs", "r1", test_err=80.0), small)
    r2 = on_data(make_run(tmp_path / "runs", "r2", test_err=90.0), other)  # same recipe and seed
    for order in ((r1, r2), (r2, r1)):
        groups, said = groups_of(*order)
        assert said == [] and sorted(groups) == ["r1", "r2"]  # both kept, whichever is named first
    assert tables.setting_notes(groups) == {"r1": f"data={small}", "r2": f"data={other}"}
    assert f"| r2 | resnet20 | data={other} | 1 | 200 |" in tables.results_table(groups)
    r3 = on_data(make_run(tmp_path / "runs", "r3", seed=1, test_err=70.0), other)
    groups, _ = groups_of(r1, r3)  # other seeds on other data are not "2 seeds"
    assert [len(m) for m in groups.values()] == [1, 1]


def test_the_same_images_at_another_path_pool_and_a_copy_counts_once(tmp_path):
    small = image_folder(tmp_path / "node1" / "small")
    moved = tmp_path / "node2" / "small"
    shutil.copytree(small, moved, copy_function=shutil.copy)  # a copy that did not keep modification times
    seeds = [on_data(make_run(tmp_path / "runs", f"r-seed{s}", seed=s, test_err=8.0 + s), d)
             for s, d in ((0, small), (1, moved))]
    groups, said = groups_of(*seeds)
    assert said == [] and [len(m) for m in groups.values()] == [2]
    resumed = on_data(make_run(tmp_path / "elsewhere", "r-seed0", test_err=8.0), moved)  # seed 0 again
    groups, said = groups_of(*seeds, resumed)
    assert [len(m) for m in groups.values()] == [2] and len(said) == 1 and "on the same data" in said[0]
    (moved / "train" / "cat" / "9.jpg").write_bytes(b"new")  # the folder changed: other images at that path
    changed = on_data(make_run(tmp_path / "later", "r-seed1", seed=1, test_err=5.0), moved)
    groups, said = groups_of(seeds[1], changed)
    assert said == [] and [len(m) for m in groups.values()] == [1, 1]
    assert all(note.startswith(f"data={moved} (") for note in tables.setting_notes(groups).values())


def _rooted(run, root, dataset):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(root=root, dataset=dataset)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_runs_without_recorded_images_are_told_apart_by_their_root(tmp_path):
    runs = [_rooted(make_run(tmp_path, name, seed=seed, test_err=9.0), root, "folder")
            for name, root, seed in (("a-seed0", "/data/c10", 0), ("a-seed1", "/data/c10/", 1), ("b-seed0", "/data/c100", 0))]
    groups, said = groups_of(*runs)
    assert said == [] and {label: len(m) for label, m in groups.items()} == {"a": 2, "b": 1}


def test_cifar_seeds_run_where_the_archive_lies_elsewhere_pool(tmp_path):
    """Seeds of one CIFAR recipe on two machines (/home/alice/cifar, /scratch/cifar) were two groups of
    one: the archive is checked by MD5 at every use, so the dataset's name is its images."""
    runs = [_rooted(make_run(tmp_path, f"r56-seed{seed}", seed=seed, test_err=9.0 + seed), root, "cifar10")
            for seed, root in ((0, "/home/alice/cifar"), (1, "/scratch/cifar"))]
    runs.append(_rooted(make_run(tmp_path / "c100", "r56-seed0", test_err=30.0), "/scratch/cifar", "cifar100"))
    groups, said = groups_of(*runs)
    assert said == [] and sorted(len(m) for m in groups.values()) == [1, 2]


def test_a_data_json_that_is_a_fifo_is_not_read(tmp_path):
    """report waited for ever on it (metrics.jsonl and classes.json were already guarded)."""
    import os

    run = make_run(tmp_path, "r", test_err=9.0)
    os.mkfifo(run / "data.json")
    groups, _ = groups_of(run)
    assert list(groups) == ["r"]


@pytest.mark.parametrize("shortcut, paper", [("A", "7.51"), ("B", "–"), ("C", "–")])
def test_table6_counts_the_params_of_the_net_built_and_gives_the_paper_only_its_own(tmp_path, shortcut, paper):
    run = make_run(tmp_path, f"resnet32-shortcut{shortcut}", model="resnet32", kwargs={"shortcut": shortcut},
                   test_err=9.0)
    built = sum(p.numel() for p in create_model("resnet32", shortcut=shortcut).parameters())
    row = table6.depth_table(tables.group_runs([tables.load_run(run)])).splitlines()[2]
    assert row == f"| {run.name} | resnet32 | {built / 1e6:.2f}M | 9.00 | 1 | {paper} |"
    assert table6.parameters(tables.load_run(run)) == built
    assert table6.millions(built) == {"A": "0.46M", "B": "0.47M", "C": "0.49M"}[shortcut]


def test_seeds_that_stopped_at_different_steps_show_their_range_and_every_point(tmp_path, monkeypatch):
    fast = make_run(tmp_path, "stop-seed0", test_err=80.0, train_errs=(60.0,))
    slow = make_run(tmp_path, "stop-seed1", seed=1, test_err=82.0, train_errs=(70.0, 50.0, 40.0, 30.0))
    groups, _ = groups_of(fast, slow)
    table = tables.results_table(groups)
    assert "| stop | resnet20 | 2 | 100–400 |" in table and "Seeds of stop stopped at different steps" in table
    steps, mean, std = tables.curve(groups["stop"], "train_err")
    assert steps == [100, 200, 300, 400] and mean == [65.0, 50.0, 40.0, 30.0] and std[1:] == [0.0] * 3
    assert tables.seeds_per_step(groups["stop"], "train_err") == [2, 1, 1, 1]
    labels = []
    monkeypatch.setattr(plots.plt, "close", lambda fig: labels.extend(fig.axes[0].get_legend_handles_labels()[1]))
    plots.plot_curves(groups, tmp_path / "curves.png")
    assert "stop train (mean of the seeds at each step; dots: each seed)" in labels


def test_a_diverged_loss_reads_in_powers_of_ten_and_auto_precision_says_what_it_means(tmp_path):
    run = make_run(tmp_path, "div", test_err=90.0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["train_loss"] = 330817120250419072.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report([run], tmp_path / "rep")[0].read_text()
    assert "| div | resnet20 | 1 | 200 | 30.00 | 3.3e+17 | 35.00 |" in text
    assert "precision auto (bf16 where the training device has fast bf16, else fp32)." in text


def test_the_setup_line_says_what_auto_precision_resolved_to_where_the_run_records_it(tmp_path):
    run = make_run(tmp_path, "r", test_err=9.0)
    summary = json.loads((run / "summary.json").read_text())
    summary["runtime"] = {"device": "cpu", "precision": "bf16", "channels_last": True, "compile": "none",
                          "fused_bn": True}
    (run / "summary.json").write_text(json.dumps(summary))
    text = write_report([run], tmp_path / "rep")[0].read_text()
    assert "precision auto (bf16 on the machine that trained it)." in text
