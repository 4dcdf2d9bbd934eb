"""The issue's scenario end to end: a folder of photos (train/<class>/ only, 200-500 px JPEGs cut from
a real photo, a stray notes.txt, one class 5x smaller), `resnetlab train --data DIR --out RUN` with
no other flag, then eval (confusion matrix), predict, export and the Python API on the run."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

import resnetlab
import resnetlab.autorecipe as autorecipe
from resnetlab.cli import main
from resnetlab.config import load_config
from resnetlab.engine import train_and_evaluate
from resnetlab.models import create_model

TINTS = {"amber": (1.0, 0.7, 0.2), "blue": (0.3, 0.5, 1.0), "green": (0.4, 1.0, 0.4), "rose": (1.0, 0.5, 0.8)}
COUNTS = {"amber": 15, "blue": 15, "green": 15, "rose": 3}


def photo(rng, tint) -> Image.Image:
    """A crop of matplotlib's sample photo (Grace Hopper, 512 x 600), tinted, at 200-500 px a side."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as src:
        w, h = (int(v) for v in rng.integers(200, 501, 2))
        left, top = (int(v) for v in rng.integers(0, 100, 2))
        img = src.convert("RGB").resize((w, h), Image.BILINEAR, box=(left, top, left + 400, top + 480))
    return Image.fromarray((np.asarray(img) * np.array(tint)).astype(np.uint8))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(folder, run directory, stderr of the training): trained once for the module, on ImageNet
    weights stood in for by a randomly initialised ResNet-18 file, with the finetune recipe cut to
    2 epochs at 32 px so it takes seconds (the sizes themselves are tested in test_autorecipe.py)."""
    tmp = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, n in COUNTS.items():
        (tmp / "myphotos" / "train" / name).mkdir(parents=True)
        for i in range(n):
            photo(rng, TINTS[name]).save(tmp / "myphotos" / "train" / name / f"{i}.jpg", quality=90)
    (tmp / "myphotos" / "train" / "notes.txt").write_text("bought the film at the corner shop")
    torch.save(create_model("resnet18").state_dict(), tmp / "resnet18-imagenet.pth")
    (tmp / "finetune_short.yaml").write_text("base: finetune\nschedule:\n  epochs: 2\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autorecipe, "IMAGENET_WEIGHTS", str(tmp / "resnet18-imagenet.pth"))
        mp.setattr(autorecipe, "FINETUNE_RECIPE", str(tmp / "finetune_short.yaml"))
        mp.setattr(autorecipe, "PRETRAINED_SIZE", 32)
        mp.setattr(autorecipe, "MIN_SIZE", 32)
        mp.setattr(autorecipe, "MIN_TOTAL_STEPS", 1)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", "--data", str(tmp / "myphotos"), "--out", str(tmp / "runs" / "my1")])
    assert code == 0, err.getvalue()
    return tmp / "myphotos", tmp / "runs" / "my1", err.getvalue()


def test_train_with_no_flags_says_what_it_chose_and_records_the_data(run):
    folder, out, err = run
    lines = err.splitlines()
    assert lines[0].startswith("resnetlab train: no --recipe given: 48 photos in 4 classes (shorter side ~")
    assert "finetune_short.yaml, fine-tuning " in lines[0] and "at 32 px, batch 8 (lr 0.00125), 2 epochs of 4 steps" in lines[0]
    assert "images per class (train/val): amber 12/3, blue 12/3, green 12/3, rose 2/1" in lines
    assert "ignored 1 file that is not an image (.txt 1): train/notes.txt" in lines
    assert any(line.startswith("resnetlab train: warning: imbalanced classes: 'amber' has 12 training images, 'rose' 2 "
                               "(6.0x)") for line in lines)
    assert "Traceback" not in err
    chosen = json.loads((out / "auto_recipe.json").read_text())
    assert chosen["recipe"].endswith("finetune_short.yaml") and "data.val_size" not in chosen["overrides"]  # 0.2: its own
    data = json.loads((out / "data.json").read_text())
    assert data["validation"]["images"] == 10 and len(data["validation"]["files"]) == 10
    assert data["images_per_class"]["val"] == {"amber": 3, "blue": 3, "green": 3, "rose": 1}
    assert data["ignored_files"] == ["train/notes.txt"] and data["layout"] == "splits"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["best_val_top1_err"] is not None


def test_eval_predict_export_and_the_python_api_on_the_run(run, tmp_path, capsys):
    folder, out, _ = run
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10 and [r["images"] for r in report["per_class"]] == [3, 3, 3, 1]
    assert all(p.endswith((".csv", ".png")) for p in report["files"])

    test = tmp_path / "labelled"  # another labelled folder: a subset of the classes, in DIR/<class>/
    for name in ("rose", "blue"):
        (test / name).mkdir(parents=True)
        for i in range(2):
            Image.open(folder / "train" / name / f"{i}.jpg").save(test / name / f"{i}.png")
    assert main(["eval", str(out), "--data", str(test), "--json", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 4 and [r["images"] for r in report["per_class"]] == [0, 2, 0, 2]  # labels remapped by name

    file = folder / "train" / "blue" / "0.jpg"
    assert main(["predict", str(out), str(file), "--json", "--topk", "4"]) == 0
    (cli,) = json.loads(capsys.readouterr().out)["results"]
    model = resnetlab.load(out)
    pred = model.predict(str(file), topk=4)
    assert isinstance(pred, resnetlab.Prediction) and pred.label == cli["top"][0]["class"] == pred.top[0].label
    assert [s.prob for s in pred.top] == pytest.approx([t["prob"] for t in cli["top"]], abs=1e-6)
    same = model.predict(Image.open(test / "blue" / "0.png"), topk=4)  # a PIL image: the file's preprocessing
    assert same.source == "image 0" and same.top == model.predict(test / "blue" / "0.png", topk=4).top
    many = model.predict([test, str(file)], topk=1)
    assert [p.source for p in many] == [str(test / "blue" / "0.png"), str(test / "blue" / "1.png"),
                                        str(test / "rose" / "0.png"), str(test / "rose" / "1.png"), str(file)]
    assert model.classes == ["amber", "blue", "green", "rose"] and model.input_size == 32

    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "my1.onnx")]) == 0
    assert "onnx" in capsys.readouterr().out.lower()


def test_bad_inputs_are_one_line(run, tmp_path, capsys, monkeypatch):
    folder, out, _ = run
    zoo = tmp_path / "zoo"
    for name in ("zebra", "amber", "yak"):
        (zoo / "test" / name).mkdir(parents=True)
        Image.open(folder / "train" / "amber" / "0.jpg").save(zoo / "test" / name / "0.jpg")
    assert main(["eval", str(out), "--data", str(zoo)]) == 2
    assert capsys.readouterr().err == (f"resnetlab eval: error: the data at {zoo} has 2 classes the model does not "
                                       "know: yak, zebra; its 4 classes are amber, blue, green, rose\n")
    assert main(["eval", str(out), "--data", str(zoo), "--split", "val"]) == 2
    assert "has no val/ folder (only test/); pick the split with --split" in capsys.readouterr().err
    assert main(["eval", str(out), "--data", str(folder / "train"), "--precision", "int8"]) == 2
    assert "--precision int8 calibrates on training images" in capsys.readouterr().err

    model = resnetlab.load(out)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(resnetlab.UserError, match=r"broken\.jpg: not an image Pillow can read; predict\(\.\.\., "
                                                  r"skip_bad=True\) gives None"):
        model.predict(folder / "broken.jpg")
    assert model.predict([folder / "broken.jpg"], skip_bad=True) == [None]
    with pytest.raises(resnetlab.UserError, match="predict takes image paths, folders or PIL images; got int"):
        model.predict([3])

    # The real name, not in an empty torch.hub cache, and no network: a closed local port stands for it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RESNETLAB_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "my2")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("resnetlab train: no --recipe given:") and len(err) == 2
    assert err[1].startswith("resnetlab train: error: could not download resnet18.tv_in1k (") and err[1].endswith(
        "The automatic recipe fine-tunes the ImageNet weights resnet18.tv_in1k; without them, pass --init WEIGHTS_FILE "
        "(a copy of them) or train from scratch with --init none")
    assert not (tmp_path / "my2").exists()  # nothing written before the weights were there
    (tmp_path / "a_file").write_text("mine")  # checked before the download is tried, and left as it was
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "a_file")]) == 2
    assert capsys.readouterr().err.splitlines()[1] == (f"resnetlab train: error: {tmp_path / 'a_file'} is a file, "
                                                       "not a run directory; choose another --out")
    assert (tmp_path / "a_file").read_text() == "mine"
    assert main(["train", "--out", str(tmp_path / "my3")]) == 2
    assert "give --data DIR and --out RUN_DIR (a recipe is then chosen from the data)" in capsys.readouterr().err
    # A folder of the user's own files, the data folder and a folder inside it: refused before the download,
    # and nothing (not even auto_recipe.json) is written there.
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.yaml").write_text("epochs: 3\n")
    (tmp_path / "project" / "notes").mkdir()
    for out, words in [(tmp_path / "project", "already holds other files (config.yaml, notes/) and no run; give a "
                        "new or empty folder"), (folder, "is the data folder; the run's files would be read as data"),
                       (folder / "train" / "run1", f"is inside the data folder {folder}; the run's files")]:
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")), sorted(folder.rglob("*"))
        assert main(["train", "--data", str(folder), "--out", str(out)]) == 2
        assert f"resnetlab train: error: --out {out} {words}" in capsys.readouterr().err.splitlines()[1]
        assert (sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")), sorted(folder.rglob("*"))) == before
    assert (tmp_path / "project" / "config.yaml").read_text() == "epochs: 3\n"
    # A start refused after auto_recipe.json was written (no 8th CUDA device) takes its new folder with it.
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "my4"), "--init", "none", "--device",
                 "cuda:7"]) == 2
    assert "resnetlab train: error: device 'cuda:7'" in capsys.readouterr().err and not (tmp_path / "my4").exists()


def test_init_none_trains_from_scratch_with_the_scratch_recipe(run, tmp_path, capsys):
    folder, _, _ = run
    out = tmp_path / "scratch"
    assert main(["train", "--data", str(folder), "--out", str(out), "--init", "none", "--max-steps", "1"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "-> recipe photos_scratch, from scratch at 128 px, batch 8 (lr 0.00625), 1 step," in first
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.finetune.init is None and (cfg.data.image_size, cfg.data.normalize) == (128, "channel")


@pytest.mark.parametrize("counts, same", [((6, 6, 6, 6), True), ((12, 4, 4, 4), False)])
def test_class_weighted_loss_changes_training_only_when_classes_are_imbalanced(tmp_path, counts, same):
    """data.balance=loss weights by n / (classes * count): all ones on a balanced set (the same run
    as balance=none, bit for bit), different updates on an imbalanced one."""
    root = tmp_path / "d"
    for (name, tint), n in zip(TINTS.items(), counts):
        for i in range(n):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), tuple(int(255 * t * (0.6 + 0.1 * (i % 4))) for t in tint)).save(root / name / f"{i}.png")
    final = {}
    for balance in ("none", "loss"):
        cfg = load_config(None, [("data.dataset", "folder"), ("data.root", str(root)), ("data.val_size", 0),
                                 ("data.cache_dir", str(tmp_path / "cache")), ("data.balance", balance),
                                 ("model.name", "resnet8"), ("optim.batch_size", 8), ("schedule.max_steps", 2),
                                 ("schedule.milestones", []), ("train.device", "cpu"), ("train.precision", "fp32")])
        train_and_evaluate(cfg, tmp_path / balance)
        final[balance] = torch.load(tmp_path / balance / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final["none"][k], final["loss"][k]) for k in final["none"]) == same


def test_resume_if_exists_does_not_read_the_init_of_a_run_with_a_checkpoint(run, monkeypatch, capsys):
    """The automatic recipe loaded (or fetched) its ImageNet weights before every start, so a job
    restarted by its scheduler on an offline machine, or after the file moved, could not continue."""
    folder, out, _ = run
    weights = folder.parent / "resnet18-imagenet.pth"
    monkeypatch.setattr(autorecipe, "IMAGENET_WEIGHTS", str(weights))
    monkeypatch.setattr(autorecipe, "FINETUNE_RECIPE", str(folder.parent / "finetune_short.yaml"))
    for name, value in (("PRETRAINED_SIZE", 32), ("MIN_SIZE", 32), ("MIN_TOTAL_STEPS", 1)):
        monkeypatch.setattr(autorecipe, name, value)
    weights.rename(weights.with_suffix(".moved"))
    try:
        assert main(["train", "--data", str(folder), "--out", str(out), "--resume-if-exists"]) == 0
    finally:
        weights.with_suffix(".moved").rename(weights)
    assert f"{out} finished at step 8: nothing to resume" in capsys.readouterr().err
