"""What predict, embed and eval show while they work and how they hand their results over: a
progress bar on a terminal (progress(done, total) from the library), and predict --jsonl's stream
of one object per image."""
import json

import pytest
from test_predict_synthetic import TEST, train_tiny_run

from resnetlab.cli import main
from resnetlab.engine import evaluate_checkpoint
from resnetlab.inference.inputs import collect_images
from resnetlab.inference.predictor import Predictor, predict_files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("predict_outputs"))


def test_predict_embed_and_eval_report_their_progress_image_by_image(run_dir, tmp_path):
    """embed, eval and predict --json printed nothing until every image was done (minutes on a large
    folder): each now calls progress(done, total) after each batch, which the CLI shows on a terminal."""
    from resnetlab.cli.console import ImageProgress
    from resnetlab.inference.embed import embed_files

    paths = collect_images([str(run_dir.parent / "data" / "test")])
    predictor = Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32")
    for work in (lambda seen: predict_files(predictor, paths, batch_size=5, progress=lambda *a: seen.append(a)),
                 lambda seen: embed_files(predictor, paths, batch_size=5, progress=lambda *a: seen.append(a)),
                 lambda seen: evaluate_checkpoint(run_dir, split="test", device="cpu", precision="fp32", batch_size=5,
                                                  progress=lambda *a: seen.append(a))):
        seen = []
        work(seen)
        assert seen == [(done, 3 * TEST) for done in range(5, 3 * TEST, 5)] + [(3 * TEST, 3 * TEST)]
    with ImageProgress("embed") as progress:  # stderr is no terminal here: no bar, nothing written
        progress(5, 10)
        assert progress.bar is None


def test_predict_jsonl_streams_one_object_per_image_then_the_unreadable_ones(run_dir, tmp_path, capsys):
    """--json holds every result until the end (1.7 GB for 20k images at --topk 200): --jsonl prints each
    image's object as it is done, the unreadable files after them."""
    paths = collect_images([str(run_dir.parent / "data" / "test")])[:7]
    (tmp_path / "bad.jpg").write_text("not an image")
    assert main(["predict", str(run_dir), *paths, str(tmp_path / "bad.jpg"), "--jsonl", "--topk", "2",
                 "--precision", "fp32", "--batch-size", "3", "--verify"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected, failed = predict_files(Predictor.from_checkpoint(run_dir, device="cpu", precision="fp32"), paths, topk=2,
                                     batch_size=3)
    assert lines[:7] == expected and failed == []
    assert lines[7] == {"file": str(tmp_path / "bad.jpg"), "error": "not an image Pillow can read"}
    assert lines[8]["verify"]["n"] == 7 and len(lines) == 9


def test_a_file_name_that_is_not_utf8_comes_back_from_the_json_as_a_name_that_opens(run_dir, tmp_path, capsys):
    """The README's promise for --json/--jsonl: Python's json reads the name back to one open() takes."""
    import os
    import shutil

    source = collect_images([str(run_dir.parent / "data" / "test")])[0]
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    shutil.copyfile(source, odd)
    assert main(["predict", str(run_dir), str(tmp_path), "--jsonl", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and "\\udce9.png" in out  # valid JSON text whatever the reader's encoding
    name = json.loads(out.splitlines()[0])["file"]
    assert os.fsencode(name) == odd and open(name, "rb").read() == open(odd, "rb").read()
