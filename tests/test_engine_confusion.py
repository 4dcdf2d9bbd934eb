"""Per-class results: the confusion matrix counted in the evaluation pass, precision/recall with
undefined ratios, the files training and `resnetlab eval` write, and where they go."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetlab.cli import main
from resnetlab.engine import train_and_evaluate
from resnetlab.engine.confusion import ClassResult, default_eval_dir, per_class, write_per_class_files
from resnetlab.engine.evaluate import evaluate
from resnetlab.engine.runtime import Runtime
from resnetlab.files import StorageError
from test_engine_train import tiny_config

RT = Runtime.resolve(device="cpu", precision="fp32", channels_last="false")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "fox", "owl"]
# true labels and the predictions the model below makes: fox (2) is never predicted, owl (3) has no images
TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
PRED = [0, 0, 1, 1, 0, 0, 1, 1]
EXPECTED = [[2, 1, 0, 0],  # rows: true class, columns: prediction (counted by hand from TRUE/PRED)
            [1, 1, 0, 0],
            [1, 2, 0, 0],
            [0, 0, 0, 0]]


class FirstPixel(nn.Module):
    """Logits are the first pixel's channels: the prediction is whatever the image says."""

    def forward(self, x):
        return x[:, :, 0, 0]


def images_predicting(classes):
    x = torch.zeros(len(classes), 4, 1, 1)
    x[torch.arange(len(classes)), torch.tensor(classes)] = 3.0
    return x


def test_confusion_matrix_is_counted_in_the_evaluation_pass():
    x, y = images_predicting(PRED), torch.tensor(TRUE)
    loader = [([x[:5]], y[:5]), ([x[5:]], y[5:])]  # two batches: counts accumulate
    report = evaluate(FirstPixel(), nn.Identity(), loader, RT, num_classes=4)
    assert report["confusion"].tolist() == EXPECTED and report["confusion"].dtype == torch.int64
    assert report["top1"] == 100.0 * 3 / 8 and report["confusion"].trace().item() == 3
    assert "confusion" not in evaluate(FirstPixel(), nn.Identity(), loader, RT)  # only when asked for
    # cat 2/3, dog 1/2, fox 0/3; owl has no images and does not count
    assert report["balanced_top1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_balanced_top1_weighs_each_class_alike():
    """1000 cats and 5 dogs: a model that never says dog had top-1 99.5%, and nothing else said otherwise."""
    from resnetlab.engine.confusion import balanced_top1

    assert balanced_top1(torch.tensor([[1000, 0], [5, 0]])) == 50.0
    assert balanced_top1(torch.zeros(3, 3)) is None


def test_precision_and_recall_per_class_undefined_is_none_not_zero():
    fox, owl = per_class(torch.tensor(EXPECTED), CLASSES)[2:]
    cat, dog = per_class(torch.tensor(EXPECTED), CLASSES)[:2]
    assert cat == ClassResult("cat", 3, 4, 2, pytest.approx(200 / 3), 50.0, pytest.approx(400 / 7))
    assert (dog.recall, dog.precision, dog.f1) == (50.0, 25.0, pytest.approx(100 / 3))
    assert fox == ClassResult("fox", 3, 0, 0, 0.0, None, None)  # never predicted: no precision
    assert owl == ClassResult("owl", 0, 0, 0, None, None, None)  # no images: no recall either
    assert per_class(torch.tensor([[0, 1], [1, 0]]), ["a", "b"])[0].f1 == 0.0  # predicted, present, never right
    with pytest.raises(ValueError, match="4x4"):
        per_class(torch.zeros(3, 3), CLASSES)


def test_files_hold_the_counts_and_blank_cells_for_undefined(tmp_path):
    paths = write_per_class_files(tmp_path / "out", torch.tensor(EXPECTED), CLASSES, "test")
    assert [p.name for p in paths] == ["confusion_test.csv", "confusion_test.png", "per_class_test.csv"]
    assert paths[0].read_text().splitlines() == ["true \\ predicted,cat,dog,fox,owl", "cat,2,1,0,0", "dog,1,1,0,0",
                                                 "fox,1,2,0,0", "owl,0,0,0,0"]
    assert paths[1].read_bytes()[:8] == PNG_MAGIC
    assert paths[2].read_text().splitlines()[3:] == ["fox,3,0,0,0.0,,", "owl,0,0,0,,,"]


@pytest.mark.filterwarnings("error")
def test_class_names_the_font_cannot_draw_give_no_warning_per_glyph(tmp_path):
    """matplotlib warned once per missing glyph, with its source lines, on a training's stderr."""
    paths = write_per_class_files(tmp_path, torch.eye(2).long(), ["猫", "犬"])
    assert paths[1].read_bytes()[:8] == PNG_MAGIC and paths[0].read_text().splitlines()[0] == "true \\ predicted,猫,犬"


def test_a_long_class_name_is_shortened_on_the_axes_and_whole_in_the_csv(tmp_path):
    """A 234-character name squeezed the matrix out of the figure, with matplotlib's "Tight layout not
    applied" warning and its source line on stderr."""
    import warnings

    long = "verylongclassname_" * 13
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_per_class_files(tmp_path, torch.tensor([[3, 1], [0, 4]]), [long, "short"])
    assert paths[0].read_text().splitlines()[0] == f"true \\ predicted,{long},short"
    from resnetlab.engine.confusion import tick_label
    assert tick_label(long) == "verylongclassna…assname_" and tick_label("short") == "short"


def test_the_per_class_table_stays_aligned_with_wide_characters():
    from resnetlab.engine.confusion import format_table

    rows = format_table([ClassResult(name, 10, 10, 5, 50.0, 50.0, 50.0) for name in ("cat", "猫", "🐶dog")]).splitlines()
    ends = {columns_to(line, line.index(" 10 ")) for line in rows[1:]}
    assert len(ends) == 1  # every row's numbers start in the same terminal column


def columns_to(line: str, index: int) -> int:
    from resnetlab.engine.confusion import columns
    return columns(line[:index])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("confusion") / "run"
    train_and_evaluate(tiny_config(("schedule.max_steps", 8), ("train.eval_every", 4)), run)
    return run


def test_training_writes_per_class_results_of_the_best_weights(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["test"]["best"]
    matrix = [[int(c) for c in line.split(",")[1:]] for line in
              (run_dir / "confusion_test.csv").read_text().splitlines()[1:]]
    assert sum(map(sum, matrix)) == best["n"] == 160
    assert sum(matrix[i][i] for i in range(4)) == round(best["top1"] * 160 / 100)
    assert [r["images"] for r in best["per_class"]] == [sum(row) for row in matrix]
    assert [r["name"] for r in best["per_class"]] == json.loads((run_dir / "classes.json").read_text())
    assert (run_dir / "confusion_test.png").read_bytes()[:8] == PNG_MAGIC
    assert all("confusion" not in r for r in summary["test"].values())  # the matrix lives in the CSV


def test_eval_prints_per_class_and_writes_into_the_run(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["per_class"] == summary["test"]["best"]["per_class"]
    folder = run_dir / "eval" / "best-test-center"
    assert report["files"] == [str(folder / n) for n in ("confusion.csv", "confusion.png", "per_class.csv")]
    assert (folder / "confusion.csv").read_text() == (run_dir / "confusion_test.csv").read_text()
    assert main(["eval", str(run_dir), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "accuracy=recall  precision" in out and "class3" in out and str(run_dir / "eval" / "best-val-center") in out


def test_eval_at_another_precision_keeps_the_runs_own_files(run_dir, capsys):
    """`eval RUN --precision fp32` after `eval RUN` wrote over the same RUN/eval/best-test-center/."""
    files = {}
    for precision in (None, "fp32"):
        assert main(["eval", str(run_dir), "--json"] + (["--precision", precision] if precision else [])) == 0
        files[precision] = json.loads(capsys.readouterr().out)["files"]
    assert files[None][0] == str(run_dir / "eval" / "best-test-center" / "confusion.csv")
    assert files["fp32"][0] == str(run_dir / "eval" / "best-test-center-fp32" / "confusion.csv")
    assert all(Path(f).is_file() for f in files[None] + files["fp32"])


def test_eval_of_a_lone_checkpoint_never_overwrites_and_bad_out_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    lone = tmp_path / "weights.pt"
    lone.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert default_eval_dir(lone, "test", "10crop", "int8") == Path("runs/eval/weights-test-10crop-int8")
    for folder in ("weights-test-center", "weights-test-center-2"):
        assert main(["eval", str(lone), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["files"][0] == f"runs/eval/{folder}/confusion.csv"
    (tmp_path / "file").write_text("")
    monkeypatch.setattr("resnetlab.engine.evaluate_checkpoint", None)  # --out is refused before evaluating
    assert main(["eval", str(lone), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"resnetlab eval: error: could not write {tmp_path / 'file' / 'confusion.csv'} (Not a directory); "
                   "nothing was written there")


def test_an_out_folder_that_fails_while_written_keeps_the_numbers_and_no_empty_folder(run_dir, tmp_path, monkeypatch,
                                                                                      capsys):
    """A disk that filled after --out was checked: the numbers just computed were not shown, and an
    empty folder was left where the files should be."""
    import resnetlab.engine.confusion as confusion

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(confusion, "write_files_atomic", full)
    out = tmp_path / "ev"
    for flags in ([], ["--json"]):
        assert main(["eval", str(run_dir), "--out", str(out), *flags]) == 2
        printed, err = capsys.readouterr()
        assert ("top-1 acc" in printed) if not flags else json.loads(printed)["n"] == 160
        assert err == (f"resnetlab eval: error: cannot write the confusion matrix into {out} (No space left on "
                       "device); choose another --out DIR\n")
        assert not out.exists()


def test_the_three_files_of_an_evaluation_are_replaced_together_or_not_at_all(tmp_path):
    """They were written one by one: a failure at the third left two new files beside an old one."""
    write_per_class_files(tmp_path, torch.tensor([[3, 1], [0, 4]]), ["a", "b"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "per_class.csv").unlink()
    (tmp_path / "per_class.csv").mkdir()  # the third cannot be written
    with pytest.raises(StorageError):
        write_per_class_files(tmp_path, torch.tensor([[1, 3], [4, 0]]), ["a", "b"])
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items() if name != "per_class.csv")


def test_eval_of_a_run_that_cannot_take_its_files_still_prints_the_numbers(run_dir, tmp_path, capsys):
    run = tmp_path / "read-only-run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    (run / "eval").write_text("")  # like a read-only run: RUN/eval/ cannot be made
    assert main(["eval", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["files"] == [] and report["n"] == 160 and len(report["per_class"]) == 4
    assert captured.err.startswith("resnetlab eval: warning: cannot write the confusion matrix into")
    assert captured.err.count("\n") == 1 and "--out DIR to keep the files" in captured.err
    assert main(["eval", str(run)]) == 0
    assert "top-1 acc" in capsys.readouterr().out


def test_a_run_whose_folder_cannot_take_the_files_warns_and_keeps_the_numbers(tmp_path):
    from resnetlab.engine.confusion import record_per_class
    from resnetlab.errors import ResnetlabWarning

    (tmp_path / "blocked").write_text("")  # a file where the folder should be
    report = {"top1": 37.5, "confusion": torch.tensor(EXPECTED)}
    test = {"last": report, "best": report}  # last is best: one dict
    with pytest.warns(ResnetlabWarning, match="could not write the confusion matrix"):
        record_per_class(test, CLASSES, tmp_path / "blocked" / "run")
    assert "confusion" not in report and [r["correct"] for r in test["best"]["per_class"]] == [2, 1, 0, 0]


def test_eval_on_another_folder_than_the_runs_own_gets_its_own_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    best = run / "checkpoints" / "best.pt"
    assert default_eval_dir(best, "test", "center") == run / "eval" / "best-test-center"
    assert default_eval_dir(best, "test", "center", "fp32") == run / "eval" / "best-test-center-fp32"
    import hashlib

    at = hashlib.sha256(b"/data/holiday_photos").hexdigest()[:6]
    assert (default_eval_dir(best, "test", "center", None, "/data/holiday_photos")
            == run / "eval" / f"best-test-center-on-holiday_photos-{at}")
    # two folders of one name (/data/three, /alt/three) wrote into one folder, the second's files over the first's
    assert default_eval_dir(best, "test", "center", None, "/alt/holiday_photos") != default_eval_dir(
        best, "test", "center", None, "/data/holiday_photos")


def test_eval_prints_the_balanced_top1_and_no_top5_of_five_classes_or_fewer(run_dir, tmp_path, capsys):
    """Top-5 of 4 classes is 100% whatever the model; plain top-1 alone hid a class never predicted."""
    assert main(["eval", str(run_dir), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "top-5: - (of 4 classes, every one is in the top 5)" in printed and "top-5 acc" not in printed
    assert "  balanced  " in printed
    assert main(["eval", str(run_dir), "--out", str(tmp_path / "ev"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    classes = [r for r in report["per_class"] if r["images"]]
    assert report["balanced_top1"] == pytest.approx(sum(r["recall"] for r in classes) / len(classes))
