"""predict, embed and int8 on a checkpoint trained here on synthetic JPEGs: what the README claims
for them, checked without the real CIFAR-10 data (test_predict.py repeats it on real images)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import build_data
from resnetlab.engine import evaluate_checkpoint, model_from_checkpoint
from resnetlab.errors import UserError
from resnetlab.inference.inputs import collect_images
from resnetlab.inference.predictor import Predictor, predict_files, top1_agreement

CLASSES = ("blue", "green", "red")  # each class is its own dominant channel: learnt in a few steps
TRAIN, TEST = 32, 12  # images per class


def write_jpegs(root: Path, seed: int = 0) -> Path:
    """ROOT/{train,test}/<class>/*.jpg: 32 px noise with the class's channel raised."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", TRAIN), ("test", TEST)):
        for channel, name in zip((2, 1, 0), CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 110, (32, 32, 3), dtype=np.uint8)
                pixels[..., channel] += rng.integers(90, 146, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("synthetic_predict"))


def train_tiny_run(tmp: Path) -> Path:
    """TMP/run: a ResNet-8 trained by `resnetlab train` for 12 steps on TMP/data, 3 x 32 synthetic JPEGs
    (a few seconds)."""
    data = write_jpegs(tmp / "data")
    assert main(["train", "--data", str(data), "--out", str(tmp / "run"), "--model", "resnet8", "--max-steps", "12",
                 "--batch-size", "32", "--lr", "0.05", "--precision", "fp32", "--device", "cpu",
                 "--set", "data.val_size=0", "--set", f"data.cache_dir={tmp / 'cache'}",
                 "--set", "schedule.kind=constant", "--set", "train.log_every=12"]) == 0
    return tmp / "run"


def test_predict_gives_the_labels_evaluation_scores(run_dir, capsys):
    paths = collect_images([str(run_dir.parent / "data" / "test")])
    assert len(paths) == 3 * TEST and paths == sorted(paths)
    results, failed = predict_files(Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32"), paths,
                                    topk=2, batch_size=5)  # batches cross class folders
    assert failed == [] and [r["file"] for r in results] == paths
    # The reference: the checkpoint's model, unfolded, on the test split the engine builds.
    model, normalizer, classes, cfg = model_from_checkpoint(run_dir / "checkpoints" / "last.pt")
    with torch.no_grad():
        expected = model(normalizer(build_data(cfg.data, seed=cfg.train.seed).test.images)).softmax(1)
    assert [r["top"][0]["index"] for r in results] == expected.argmax(1).tolist()
    assert [r["top"][0]["prob"] for r in results] == pytest.approx(expected.max(1).values.tolist(), abs=1e-4)
    assert all(r["top"][0]["prob"] >= r["top"][1]["prob"] for r in results)

    report = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="fp32")
    truth = [Path(p).parent.name for p in paths]
    accuracy = 100.0 * sum(r["top"][0]["class"] == t for r, t in zip(results, truth)) / len(paths)
    assert accuracy == pytest.approx(report["top1"]) and report["n"] == 3 * TEST

    assert main(["predict", str(run_dir), *paths[:4], "--json", "--topk", "1", "--precision", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["index"] for r in out["results"]] == [r["top"][0]["index"] for r in results[:4]]


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_embed_writes_the_checkpoints_features_one_named_row_per_image(run_dir, tmp_path, suffix):
    from resnetlab.models.features import embed
    from resnetlab.inference.embed import load_embeddings

    test_dir = run_dir.parent / "data" / "test"
    assert main(["embed", str(run_dir), str(test_dir), "--out", str(tmp_path / f"emb{suffix}"), "--precision", "fp32"]) == 0
    names, emb = load_embeddings(tmp_path / f"emb{suffix}")
    assert names == collect_images([str(test_dir)]) and emb.shape == (3 * TEST, 64) and emb.dtype == "float32"
    model, normalizer, _, cfg = model_from_checkpoint(run_dir / "checkpoints" / "last.pt")
    with torch.no_grad():
        expected = embed(model, normalizer(build_data(cfg.data, seed=cfg.train.seed).test.images))
    torch.testing.assert_close(torch.from_numpy(emb), expected, rtol=1e-4, atol=1e-4)


def test_embed_of_images_none_of_which_can_be_read_writes_nothing(run_dir, tmp_path, capsys):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_text("not an image")
    assert main(["embed", str(run_dir), str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "emb.npy"), "--precision", "fp32"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # every message on stderr: the reasons, then the error
    lines = err.splitlines()
    assert [line.split(": ")[:3] for line in lines[:2]] == [["resnetlab embed", "warning", f"skipped {tmp_path / n}"]
                                                           for n in ("a.jpg", "b.png")]
    assert lines[2:] == [f"resnetlab embed: error: none of the 2 images could be read; nothing was written to "
                         f"{tmp_path / 'emb.npy'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.png"]


def test_int8_of_an_auto_predictor_that_compiles_fp32_quantizes_the_eager_network(run_dir, monkeypatch):
    """On an AVX2 CPU auto means compiled fp32 (inference/fastpath.py): quantizing that predictor
    quantizes the folded network inside, without building the compiled package it would not use."""
    from resnetlab.inference import compile_cache
    from resnetlab.inference.fastpath import FastModel

    monkeypatch.setenv("RESNETLAB_COMPILE", "1")
    monkeypatch.setattr("resnetlab.cpu.cpu_flags", lambda: frozenset({"avx2", "fma", "sse4_2"}))
    monkeypatch.setattr(compile_cache, "compile_package", lambda *a: pytest.fail("compiled for int8"))
    data = run_dir.parent / "data"
    auto = Predictor.from_checkpoint(run_dir, device="cpu")
    assert isinstance(auto.model, FastModel) and auto.precision == "fp32"
    int8 = auto.quantized(collect_images([str(data / "train")]), images=48)
    assert int8.precision == "int8" and top1_agreement(int8, collect_images([str(data / "test")]))["n"] == 3 * TEST


def test_int8_is_calibrated_on_the_given_images_and_agrees_with_fp32(run_dir, capsys):
    data = run_dir.parent / "data"
    fp32 = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    int8 = fp32.quantized(collect_images([str(data / "train")]), images=48)
    assert int8.precision == "int8" and fp32.precision == "fp32" and not fp32.int8  # a copy; fp32 unchanged
    check = top1_agreement(int8, collect_images([str(data / "test")]))
    assert check["n"] == 3 * TEST and check["precision"] == "int8"
    assert check["top1_agreement"] >= 90.0 and check["max_abs_prob_diff"] < 0.15
    with pytest.raises(UserError, match="fp32 model"):
        int8.embeddings([torch.zeros(1, 3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(UserError, match="fp32 predictor on the CPU"):
        int8.quantized([str(data / "test")])

    assert main(["predict", str(run_dir), str(data / "test"), "--precision", "int8", "--calibrate",
                 str(data / "train"), "--verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and out["verify"]["precision"] == "int8" and len(out["results"]) == 3 * TEST
    assert main(["predict", str(run_dir), str(data / "test"), "--calibrate", str(data / "test")]) == 2
    assert "--calibrate is for --precision int8" in capsys.readouterr().err

    fp32_eval = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="fp32")
    int8_eval = evaluate_checkpoint(run_dir, split="test", device="cpu", precision="int8")
    assert int8_eval["precision"] == "int8" and int8_eval["n"] == fp32_eval["n"] == 3 * TEST
    assert abs(int8_eval["top1"] - fp32_eval["top1"]) <= 100 * 3 / (3 * TEST)  # at most 3 images change class


def test_cli_reports_non_images_and_sets_the_exit_code(run_dir, tmp_path, capsys):
    good = sorted((run_dir.parent / "data" / "test" / "red").iterdir())[:2]
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    code = main(["predict", str(run_dir), *map(str, good), str(bad), str(broken), "--json", "--topk", "3"])
    printed, err = capsys.readouterr()
    out = json.loads(printed)
    assert code == 1
    assert [r["file"] for r in out["results"]] == list(map(str, good))
    assert sorted(f["file"] for f in out["failed"]) == sorted([str(bad), str(broken)])
    assert all(len(r["top"]) == 3 for r in out["results"])
    assert sorted(line.split(": ")[2] for line in err.splitlines()) == [f"skipped {broken}", f"skipped {bad}"]
    assert main(["predict", str(run_dir), *map(str, good)]) == 0
    assert capsys.readouterr().err == ""


def test_predict_lines_stay_on_stdout_and_unreadable_files_go_to_stderr(run_dir, tmp_path, capsys):
    """`predict ... > results.txt` keeps one result line per image and nothing else; the files that
    could not be read are named on stderr, and the exit status says whether any, or all, failed."""
    good = [str(p) for p in sorted((run_dir.parent / "data" / "test" / "red").iterdir())[:2]]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(run_dir), good[0], str(bad), good[1], "--topk", "1", "--precision", "fp32"]) == 1
    out, err = capsys.readouterr()
    assert [line.split("  ")[0] for line in out.splitlines()] == good
    assert len(err.splitlines()) == 1 and err.startswith(f"resnetlab predict: warning: skipped {bad}: ")
    for argv in ([], ["--json"]):  # nothing readable at all: an error (status 2), not a result
        assert main(["predict", str(run_dir), str(bad), *argv]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines()[1:] == ["resnetlab predict: error: the image given could not be read"]


def test_folders_skip_other_files_and_missing_inputs_are_user_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.png", "a/b/1.jpg", "a/readme.md", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert collect_images([str(tmp_path / "a")]) == [str(tmp_path / "a" / "2.png"), str(tmp_path / "a" / "b" / "1.jpg")]
    with pytest.raises(UserError, match="no such file"):
        collect_images([str(tmp_path / "missing.jpg")])
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would wait for a writer for ever
    for special in (tmp_path / "pipe.jpg", Path(os.devnull)):
        with pytest.raises(UserError, match=f"^{special}: not a regular file or folder"):
            collect_images([str(special)])
    assert main(["predict", str(tmp_path / "nothing.pt"), str(tmp_path / "a")]) == 2


def test_linked_folders_are_followed_once_and_blank_or_empty_inputs_refused(run_dir, tmp_path, monkeypatch, capsys):
    """A folder of links to class folders gave [] in Python and "no image files found" on the command
    line; "" (an unset shell variable) classified everything under the current folder; a folder
    without images gave [] in Python."""
    test = run_dir.parent / "data" / "test"
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "red").symlink_to(test / "red")
    (tmp_path / "linked" / "again").symlink_to(tmp_path / "linked")  # a loop: each real folder is read once
    found = collect_images([str(tmp_path / "linked")])
    assert found == [str(tmp_path / "linked" / "red" / f"{i:03d}.jpg") for i in range(TEST)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    from resnetlab.data.folder import IMAGE_EXTS

    exts = ", ".join(sorted(IMAGE_EXTS))  # .avif where this Pillow reads it
    for item, message in (("", "an image path is blank (''; an unset shell variable?)"),
                          (" ", "an image path is blank (' '; an unset shell variable?)"),
                          (str(tmp_path / "empty"), f"no image files found in {tmp_path / 'empty'} (none ending in {exts})")):
        with pytest.raises(UserError) as err:
            collect_images([item])
        assert str(err.value) == message
    import resnetlab

    monkeypatch.chdir(tmp_path)  # "" is the current folder to the file system: it holds linked/
    classifier = resnetlab.load(run_dir, device="cpu", precision="fp32")
    assert [p.source for p in classifier.predict(tmp_path / "linked")] == found
    for item in ("", str(tmp_path / "empty")):
        with pytest.raises(UserError, match="blank|no image files found"):
            classifier.predict(item)
    assert main(["predict", str(run_dir), "", "--device", "cpu"]) == 2
    assert capsys.readouterr() == ("", "resnetlab predict: error: an image path is blank (''; an unset shell "
                                       "variable?)\n")


@pytest.fixture(scope="module")
def classifier(run_dir):
    import resnetlab

    return resnetlab.load(run_dir, device="cpu", precision="fp32")


@pytest.mark.parametrize("images, kwargs, message", [
    ("PHOTO", {"topk": "3"}, "topk must be an integer of at least 1, got '3'"),
    ("PHOTO", {"topk": 2.5}, "topk must be an integer of at least 1, got 2.5"),
    ("PHOTO", {"topk": None}, "topk must be an integer of at least 1, got None"),
    ("PHOTO", {"topk": 0}, "topk must be an integer of at least 1, got 0"),
    ("PHOTO", {"batch_size": "2"}, "batch_size must be an integer of at least 1, got '2'"),
    ("PHOTO", {"batch_size": 0}, "batch_size must be an integer of at least 1, got 0"),
    ("PHOTO", {"skip_bad": "no"}, "skip_bad takes True or False, got str"),  # "no" is truthy: it skipped
    (5, {}, "images must be a path, a folder, a PIL image or a list of them; got int"),
    (None, {}, "images must be a path, a folder, a PIL image or a list of them; got NoneType"),
    (b"photo.jpg", {}, "images must be a path, a folder, a PIL image or a list of them; got bytes"),
])
def test_predict_names_a_wrong_argument_in_one_user_error(classifier, run_dir, images, kwargs, message):
    photo = str(run_dir.parent / "data" / "test" / "red" / "000.jpg")
    with pytest.raises(UserError) as err:
        classifier.predict(photo if images == "PHOTO" else images, **kwargs)
    assert str(err.value) == message


def test_an_empty_pil_image_is_an_unreadable_image(classifier, run_dir):
    photo = run_dir.parent / "data" / "test" / "red" / "000.jpg"
    empty = Image.new("RGB", (0, 0))
    with pytest.raises(UserError, match=r"^image 0: an empty image \(0 x 0 pixels\); predict\(\.\.\., skip_bad=True\)"):
        classifier.predict(empty)
    # Empty images among others neither stop them nor set the side they are decoded at (3 of 5 x 0
    # pixels once made the photo 5 px): each is None in its place, as an unreadable file is.
    alone, flat = classifier.predict(photo), Image.new("RGB", (5, 0))
    results = classifier.predict([empty, flat, photo, flat, flat], skip_bad=True)
    assert results[:2] == results[3:] == [None, None] and results[2].label == alone.label
    assert results[2].prob == pytest.approx(alone.prob, abs=1e-6)


@pytest.mark.parametrize("small_net", [True, False])
def test_an_image_is_read_by_its_own_size_never_by_its_companions(run_dir, tmp_path, small_net):
    """A 48 px image was resized whole when predicted alone and centre-cropped beside one large photo
    (the choice was made per batch of up to 1024 files): two predictions for one image."""
    from dataclasses import replace

    from resnetlab.inference.predictor import iter_predictions

    rng = np.random.default_rng(3)
    names = ["big0.png", "small0.png", "big1.png", "small1.png", "small2.png", "bad.png", "big2.png"]
    for name in names:
        side = 48 if name.startswith("small") else 120
        Image.fromarray(rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [str(tmp_path / name) for name in names]
    predictor = replace(Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32"), small=small_net)
    together = list(iter_predictions(predictor, paths, topk=3, batch_size=2))
    assert [i for i, _ in together] == [0, 1, 2, 3, 4, 6]  # file order, the unreadable file left out
    assert [f for f, _ in predictor.failed] == [paths[5]]
    # images read alike are batched together: 4 batches of (up to) 2, not a batch per change of size
    assert len(list(predictor.batches(paths, batch_size=2))) == 4
    from resnetlab.inference.embed import embed_files

    names, rows, failed = embed_files(predictor, paths, batch_size=2)  # rows in file order too
    assert names == [paths[i] for i in (0, 1, 2, 3, 4, 6)] and len(rows) == 6 and len(failed) == 1
    alone = embed_files(predictor, [paths[3]])[1]
    np.testing.assert_allclose(rows[3], alone[0], rtol=1e-5, atol=1e-6)
    for i, top in together:
        alone, = predict_files(predictor, [paths[i]], topk=3)[0]
        assert [t["index"] for t in alone["top"]] == [t["index"] for t in top]
        assert [t["prob"] for t in alone["top"]] == pytest.approx([t["prob"] for t in top], abs=1e-6)


def test_predict_of_a_folder_passes_over_nas_thumbnails_as_training_does(tmp_path):
    for name in ("a.jpg", "@eaDir/a.jpg/SYNOPHOTO_THUMB_M.jpg", "__MACOSX/._a.jpg", "sub/b.jpe", ".hidden.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="JPEG")
    assert collect_images([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.jpe")]


def test_threads_sharing_a_predictor_each_read_their_own_unreadable_files(run_dir, tmp_path):
    """Predictor.failed was one list per object: another thread's call emptied it before this call read the
    reason of its bad file (a service's shared resnetlab.load said "could not be read")."""
    import threading

    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    good, bad = str(tmp_path / "good.png"), str(tmp_path / "bad.png")
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    assert len(list(predictor.batches([bad, good]))) == 1 and [f for f, _ in predictor.failed] == [bad]
    other = threading.Thread(target=lambda: list(predictor.batches([good])))
    other.start()
    other.join()
    assert [f for f, _ in predictor.failed] == [bad] and predictor.failed_at == {0}


def test_a_predictor_can_be_copied_and_pickled(run_dir):
    """The per-thread record of unreadable files (threading.local) made copy.deepcopy and pickle fail."""
    import copy
    import pickle

    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    for twin in (copy.deepcopy(predictor), pickle.loads(pickle.dumps(predictor))):
        assert twin.failed == [] and twin.classes == predictor.classes
