"""Reports on hand-made run directories (exact numbers), the analyses' hooks, and the report command."""
import json

import pytest
import torch
import torch.nn.functional as F

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.config import Config, ModelConfig, TrainConfig, save_config
from resnetlab.errors import UserError
from resnetlab.reports import analysis, plots, table6, tables
from resnetlab.reports.report import report_dir, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, name, model="resnet20", seed=0, test_err=None, train_errs=(50.0, 30.0), kwargs=None, classes=10):
    run = root / name
    run.mkdir(parents=True)
    save_config(Config(model=ModelConfig(model, kwargs or {}), train=TrainConfig(seed=seed)), run / "config.yaml")
    (run / "classes.json").write_text(json.dumps([f"c{i}" for i in range(classes)]))
    lines = [{"step": 100 * (i + 1), "train_err": e, "train_loss": e / 100, "val_top1_err": e + 5, "lr": 0.1 / (i + 1)}
             for i, e in enumerate(train_errs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    if test_err is not None:
        summary = {"steps": 100 * len(train_errs), "best_val_top1_err": train_errs[-1] + 5,
                   "test": {"last": {"top1_err": test_err}, "best": {"top1_err": test_err + 1}}}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_seeds_of_one_config_are_pooled_as_mean_std_best(tmp_path):
    dirs = [make_run(tmp_path, f"deep-seed{s}", seed=s, test_err=err, train_errs=(50.0 + s, 30.0 + 2 * s))
            for s, err in zip((0, 1, 2), (8.0, 9.0, 10.0))]
    dirs.append(make_run(tmp_path, "p0", model="plain20", test_err=12.5))
    groups = tables.group_runs([tables.load_run(d) for d in dirs])
    assert list(groups) == ["deep", "p0"]  # folder names, the seeds' one without its seed
    stats = tables.group_stats(groups["deep"])
    assert stats["test_err"] == tables.Stat(9.0, 1.0, 8.0, 3)
    assert stats["train_err"] == tables.Stat(32.0, 2.0, 30.0, 3)
    table = tables.results_table(groups)
    assert "| deep | resnet20 | 3 | 200 | 32.00 ± 2.00 | 0.32 ± 0.02 | 37.00 ± 2.00 | 9.00 ± 1.00 | 10.00 ± 1.00 | 8.00 |" in table
    assert "| p0 | plain20 | 1 | 200 | 30.00 | 0.30 | 35.00 | 12.50 | 13.50 | 12.50 |" in table
    assert table6.depth_table(groups).splitlines()[2:] == ["| deep | resnet20 | 0.27M | 8.00 (9.00 ± 1.00) | 3 | 8.75 |"]
    steps, mean, std = tables.curve(groups["deep"], "train_err")
    assert steps == [100, 200] and mean == [51.0, 32.0] and std == pytest.approx([1.0, 2.0])


def test_unfinished_runs_count_where_they_have_numbers(tmp_path):
    run = tables.load_run(make_run(tmp_path, "r", test_err=None))
    assert tables.final_numbers(run)["test_err"] is None and tables.final_numbers(run)["train_err"] == 30.0
    assert tables.aggregate([None, float("nan")]) is None


def test_groups_are_labelled_by_folder_and_their_setting_shown(tmp_path):
    dirs = [make_run(tmp_path, f"opt{o}", model="resnet32", kwargs={"shortcut": o}) for o in "ABC"]
    groups = tables.group_runs([tables.load_run(d) for d in dirs])
    assert list(groups) == ["optA", "optB", "optC"]
    assert tables.setting_notes(groups) == {"optA": "shortcut=A", "optB": "shortcut=B", "optC": "shortcut=C"}
    assert "| optB | resnet32 | shortcut=B | 1 |" in tables.results_table(groups)
    same_names = [make_run(tmp_path / p, "run", model=m) for p, m in (("a", "resnet20"), ("b", "resnet56"))]
    assert list(tables.group_runs([tables.load_run(d) for d in same_names])) == ["a/run", "b/run"]
    mixed = [make_run(tmp_path / "m", n, seed=s) for n, s in (("x", 0), ("y", 1))]  # one config, unrelated names
    assert list(tables.group_runs([tables.load_run(d) for d in mixed])) == ["x, y"]


def test_paper_column_only_for_the_papers_cifar10_nets(tmp_path):
    photos = make_run(tmp_path, "my1", model="resnet18", test_err=20.0, classes=4)
    cifar_like = make_run(tmp_path, "r20-on-4", model="resnet20", test_err=20.0, classes=4)
    for runs in ([photos], [cifar_like]):
        text = write_report(runs, tmp_path / runs[0].name / "report")[0].read_text()
        assert "Table 6" not in text and "| resnet" in text
    paper = make_run(tmp_path, "r20", test_err=9.0)
    assert "| r20 | resnet20 | 0.27M | 9.00 | 1 | 8.75 |" in write_report([photos, paper], tmp_path / "both")[0].read_text()


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="config.yaml"):
        tables.load_run(tmp_path)
    run = make_run(tmp_path, "r")
    (run / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1"):
        tables.load_run(run)


def test_report_writes_pngs_and_markdown(tmp_path):
    dirs = [make_run(tmp_path / "runs", m, model=m, test_err=10.0) for m in ("plain20", "plain56", "resnet20", "resnet56")]
    paths = write_report(dirs, tmp_path / "rep", title="Twins")
    assert [p.name for p in paths] == ["report.md", "curves.png", "degradation.png", "final_vs_depth.png", "metrics.csv"]
    for png in paths[1:4]:
        assert png.read_bytes()[:8] == PNG_MAGIC
    text = paths[0].read_text()
    assert text.startswith("# Twins") and "![Plain (left) vs residual (right)" in text and "| plain56 | plain56 | 1 |" in text
    assert paths[4].read_text().splitlines()[:3] == ["run,epoch,step,lr,train_loss,train_err,val_top1_err",
                                                     "plain20,,100,0.1,0.5,50.0,55.0", "plain20,,200,0.05,0.3,30.0,35.0"]
    with pytest.raises(UserError, match="unknown analysis"):
        write_report(dirs, tmp_path / "rep", analyses=["loss"])


@pytest.mark.parametrize("name, count", [("resnet20", 19), ("plain20", 19), ("resnet56", 55), ("resnet110", 109),
                                         ("resnet18", 16), ("resnet50", 16)])
def test_response_layers_are_the_bns_after_every_3x3_conv(name, count):
    layers = analysis.response_layers(create_model(name))
    assert len(layers) == count
    assert all(conv.kernel_size == (3, 3) and bn.num_features == conv.out_channels for _, conv, bn in layers)


def test_plain_and_residual_twins_are_hooked_on_the_same_modules():
    names = [n for n, _, _ in analysis.response_layers(create_model("resnet20"))]
    assert names == [n for n, _, _ in analysis.response_layers(create_model("plain20"))]
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    with pytest.raises(UserError, match="post-activation"):
        analysis.response_layers(create_model("preact_resnet110"))


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)


def test_responses_are_measured_before_the_addition_and_relu():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    _randomise_bn(model)
    x = torch.randn(8, 3, 32, 32)
    stds = analysis.layer_responses(model, [x[:5], x[5:]])
    with torch.no_grad():  # recompute the first block by hand
        stem = model.bn1(model.conv1(x))
        block = model.layer1[0]
        pre_add = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(F.relu(stem))))))
        block_out = block(F.relu(stem))
    assert stds[0] == pytest.approx(stem.double().std(unbiased=False).item(), rel=1e-5)
    assert stds[2] == pytest.approx(pre_add.double().std(unbiased=False).item(), rel=1e-5)
    assert abs(stds[2] - block_out.std().item()) > 0.01  # not the output after the addition and ReLU


def test_gradient_norms_match_autograd_on_one_layer():
    torch.manual_seed(0)
    model = create_model("plain20")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    norms = analysis.gradient_norms(model, [(x, y)])
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert len(norms) == 19 and norms[-1] == pytest.approx(model.layer3[2].conv2.weight.grad.norm().item(), rel=1e-5)
    assert all(n > 0 for n in norms)


def test_report_command_expands_folders_and_reports_bad_input(tmp_path, capsys):
    for s in (0, 1):
        make_run(tmp_path / "exp", f"resnet20-seed{s}", seed=s, test_err=8.0 + s)
    assert main(["report", str(tmp_path / "exp"), "--out", str(tmp_path / "rep")]) == 0
    assert "| resnet20 | resnet20 | 2 |" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(tmp_path / "rep")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_report_goes_to_a_folder_of_its_own_and_never_over_another(tmp_path, capsys):
    runs = tmp_path / "runs"
    one, two = make_run(runs, "a", test_err=9.0), make_run(runs, "b", seed=1, test_err=8.0)  # two seeds
    assert report_dir([one]) == one / "report" and report_dir([one, two]) == runs / "report"
    assert main(["report", str(one)]) == 0 and (one / "report" / "report.md").is_file()
    assert main(["report", str(one), str(runs / "a" / ".")]) == 0  # the same run again: refreshed, not numbered
    assert main(["report", str(runs)]) == 0  # both runs: report/ beside them
    assert main(["report", str(two), str(one)]) == 0  # the same two again: the same folder
    assert not (one / "report-2").exists() and not (runs / "report-2").exists()
    assert main(["report", str(two), str(make_run(runs, "d", model="resnet56"))]) == 0  # other runs: the next number
    printed = capsys.readouterr().out.splitlines()
    assert [p for p in printed if p.endswith("report.md")] == [str(one / "report" / "report.md")] * 2 + [
        str(runs / "report" / "report.md")] * 2 + [str(runs / "report-2" / "report.md")]
    assert "| a, b | resnet20 |" in (runs / "report" / "report.md").read_text()  # not overwritten by b + d
    assert main(["report", str(two), "--out", str(runs / "report")]) == 2
    assert "holds a report of other runs" in capsys.readouterr().err
    (two / "report").mkdir()
    (two / "report" / "report.md").write_text("# written before reports named their runs")
    assert report_dir([two]) == two / "report-2"  # by default never over it
    with pytest.raises(UserError, match=r"already holds other files \(report.md\) and no report; give a new or empty"):
        report_dir([two], two / "report")  # named with --out: its report.md might be the user's own
    with pytest.raises(UserError, match=r"already holds other files \(.*config.yaml.*\) and no report"):
        report_dir([two], two)  # the run's own folder: its metrics.csv would be replaced


@pytest.mark.parametrize("text, words", [(b"not: [valid", "is not readable YAML (while parsing a flow sequence)"),
                                         (b"\xff\xfe", "is not readable YAML ('utf-8' codec can't decode byte 0xff"),
                                         (b"", "is empty or not a run's config")])
def test_a_damaged_config_yaml_is_one_line(tmp_path, capsys, text, words):
    run = make_run(tmp_path, "a")
    (run / "config.yaml").write_bytes(text)
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err.startswith(f"resnetlab report: error: {run / 'config.yaml'} {words}")


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_stay_outside_the_axes(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    dirs = [make_run(tmp_path, m, model=m, train_errs=(80.0, 60.0, 40.0, 20.0)) for m in ("plain20", "resnet20", "resnet56")]
    groups = tables.group_runs([tables.load_run(d) for d in dirs])
    plots.plot_curves(groups, "unused.png")
    plots.plot_degradation(groups, "unused.png")
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not any(_overlaps(box, ax.get_window_extent(renderer)) for ax in fig.axes)
