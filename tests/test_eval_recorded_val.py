"""`eval RUN --split val` scores exactly the images the run held out, as RUN/data.json lists them,
even after the data folder gained or lost images (which draws another hold-out), and says in one
line when some of those images are gone."""
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_engine_train import tiny_config

from resnetlab.cli import main
from resnetlab.config import config_to_dict, load_config
from resnetlab.data import build_data

evaluate_module = importlib.import_module("resnetlab.engine.evaluate")  # the package exports a function `evaluate`
CHANNELS = {"bird": 2, "cat": 0, "dog": 1}


def noise_photo(path, channel, side, rng):
    pixels = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
    pixels[..., channel] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(params=[16, 72], ids=["in-memory", "files"])
def run(request, tmp_path, capsys):
    """(data folder, run directory, side): 2 steps of a ResNet-8 on ROOT/<class>/ noise PNGs, 6 of 24 held out."""
    side, rng = request.param, np.random.default_rng(0)
    data = tmp_path / "photos"
    for name, channel in CHANNELS.items():
        for i in range(8):
            noise_photo(data / name / f"img{i}.png", channel, side, rng)
    cfg = tiny_config(("data.dataset", "folder"), ("data.root", str(data)), ("data.val_size", 0.25),
                      ("data.eval_resize", 16), ("data.cache_dir", str(tmp_path / "cache")),
                      ("schedule.max_steps", 2), ("optim.batch_size", 6))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert main(["train", "--recipe", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    return data, tmp_path / "run", side


def scored_on_val(monkeypatch, capsys, out):
    """(the dataset `eval OUT --split val` scored, its report, its warning lines)."""
    seen = []
    real = evaluate_module.evaluate_split

    def spy(scored, dataset, *args, **kwargs):
        seen.append(dataset)
        return real(scored, dataset, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_split", spy)
    assert main(["eval", str(out), "--split", "val", "--json", "--device", "cpu"]) == 0
    printed, err = capsys.readouterr()
    return seen[-1], json.loads(printed), [line for line in err.splitlines() if "warning" in line]


def same_images(a, b) -> bool:
    if hasattr(a, "paths"):
        return a.paths == b.paths and torch.equal(a.labels, b.labels)
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_eval_val_scores_the_recorded_hold_out_after_the_folder_changed(run, monkeypatch, capsys):
    data, out, side = run
    cfg = load_config(str(out / "config.yaml"))
    held = build_data(cfg.data, seed=cfg.train.seed).val  # what training held out
    recorded = json.loads((out / "data.json").read_text())["validation"]
    before, report, warned = scored_on_val(monkeypatch, capsys, out)
    assert same_images(before, held) and report["n"] == recorded["images"] == 6 and warned == []

    rng = np.random.default_rng(1)
    for i in range(8, 13):  # new photos: another hold-out is drawn from the folder now
        noise_photo(data / "cat" / f"img{i}.png", CHANNELS["cat"], side, rng)
    (data / "dog" / next(n for n in (f"img{i}.png" for i in range(8))
                         if f"dog/{n}" not in recorded["files"])).unlink()  # and a training photo gone
    redrawn = build_data(cfg.data, seed=cfg.train.seed).provenance["validation"]["files"]
    assert redrawn != recorded["files"]  # the case this test is about

    after, again, warned = scored_on_val(monkeypatch, capsys, out)
    assert same_images(after, held) and warned == []
    assert (again["n"], again["top1"], again["per_class"]) == (report["n"], report["top1"], report["per_class"])


def test_eval_val_says_in_one_line_which_recorded_images_are_missing(run, capsys):
    data, out, _ = run
    files = json.loads((out / "data.json").read_text())["validation"]["files"]
    (data / files[1]).unlink()
    assert main(["eval", str(out), "--split", "val", "--device", "cpu"]) == 2
    printed, err = capsys.readouterr()
    assert printed == "" and err.splitlines() == [
        f"resnetlab eval: error: 1 of the 6 validation images {out / 'data.json'} lists are missing from {data} "
        f"({files[1]}); put them back to score the run's validation split, or pass --data DIR, the folder that "
        "holds them"]


def test_a_record_without_the_held_out_files_draws_the_hold_out_again_with_a_warning(run, monkeypatch, capsys):
    """data.json of a run from before it listed the held-out files: the hold-out is drawn again, as said."""
    data, out, side = run
    record = json.loads((out / "data.json").read_text())
    record["validation"] = {k: v for k, v in record["validation"].items() if k != "files"}
    (out / "data.json").write_text(json.dumps(record))
    noise_photo(data / "cat" / "img8.png", CHANNELS["cat"], side, np.random.default_rng(1))
    _, _, warned = scored_on_val(monkeypatch, capsys, out)
    assert warned == [f"resnetlab eval: warning: the data at {data} is not what {out} trained on (train images per "
                      "class were cat 6; now cat 7): the validation split is drawn from it again and may hold images "
                      "the run trained on"]


def test_in_memory_data_without_file_names_scores_the_recorded_indices(tmp_path, monkeypatch, capsys):
    """Data without file names (CIFAR's batches, synthetic) records indices into the training split:
    those are scored, even where the hold-out drawn now would differ (here: a record edited to say so)."""
    from resnetlab.config import apply_overrides

    cfg = tiny_config(("schedule.max_steps", 2))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(tmp_path / "tiny.yaml"), "--out", str(out)]) == 0
    record = json.loads((out / "data.json").read_text())
    assert len(record["validation"]["indices"]) == 32
    record["validation"]["indices"] = list(range(10))
    (out / "data.json").write_text(json.dumps(record))
    capsys.readouterr()
    scored, report, warned = scored_on_val(monkeypatch, capsys, out)
    whole = build_data(apply_overrides(cfg, [("data.val_size", 0)]).data, seed=cfg.train.seed).train
    assert report["n"] == 10 and same_images(scored, whole.subset(torch.arange(10))) and warned == []
    record["validation"]["indices"] = [3, 160]
    (out / "data.json").write_text(json.dumps(record))
    assert main(["eval", str(out), "--split", "val"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"resnetlab eval: error: {out / 'data.json'} lists validation image index 160 of the training split, "
        "which now holds only 160 images: this is not the data the run trained on"]


def test_eval_does_not_fit_a_normaliser_it_would_not_use(run, monkeypatch, capsys):
    """The model's own normaliser scores the images: fitting one on the training images (decoding up to
    data.stats_images photos) was time spent for nothing, on every eval."""
    _, out, _ = run

    def refuse(*args, **kwargs):
        raise AssertionError("fitted a normaliser")

    monkeypatch.setattr("resnetlab.data.build.fit_normalizer", refuse)
    assert main(["eval", str(out), "--split", "val", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_the_hold_outs_own_cache_leaves_the_training_splits_cache_in_place(run, monkeypatch, capsys):
    """Caches replace older ones of the same folder and part: the held-out images, decoded on their own
    after the folder changed, must not count as the training split's newer cache."""
    data, out, side = run
    if side != 16:
        pytest.skip("photos are not cached")
    noise_photo(data / "cat" / "img8.png", CHANNELS["cat"], side, np.random.default_rng(1))  # another hold-out now
    cfg = load_config(str(out / "config.yaml"))
    train_cache = build_data(cfg.data, seed=cfg.train.seed).provenance["caches"][0]
    scored_on_val(monkeypatch, capsys, out)  # the recorded hold-out, decoded into a cache of its own
    caches = sorted(p.name for p in (out.parent / "cache").glob("*.npz"))
    assert Path(train_cache).name in caches and len(caches) == 2


def test_two_runs_hold_out_caches_are_their_own(run, capsys):
    """Every run on a folder shared one hold-out part: evaluating two runs of other seeds in turn made
    each remove the other's cache, and decode again."""
    data, out, side = run
    if side != 16:
        pytest.skip("photos are not cached")
    other = out.parent / "run2"
    assert main(["train", "--recipe", str(out.parent / "tiny.yaml"), "--out", str(other), "--set", "train.seed=1"]) == 0
    noise_photo(data / "cat" / "img8.png", CHANNELS["cat"], side, np.random.default_rng(1))  # other hold-outs now
    for run_dir in (out, other, out):
        assert main(["eval", str(run_dir), "--split", "val", "--json"]) == 0
    capsys.readouterr()
    caches = sorted((out.parent / "cache").glob("*.npz"))
    assert len(caches) == 3  # the folder's, and each run's hold-out
