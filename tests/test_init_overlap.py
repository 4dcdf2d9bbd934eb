"""--init RUN on the folder RUN trained on, after images were added: the new hold-out is drawn
again, and the run says how many of its validation images RUN did not hold out (it may have
trained on them); on the same data and seed, nothing; a hostile RUN/data.json is passed over."""
import json
from types import SimpleNamespace

import pytest
from test_data_folders import _write
from test_faults_data import COLOURS, photos, trained_on

from resnetlab.cli import main
from resnetlab.engine.init_overlap import init_holdout_warning


def _init_run(tmp_path, run, out, capsys) -> str:
    assert main(["train", "--recipe", str(tmp_path / "tiny.yaml"), "--init", str(run), "--out", str(out)]) == 0
    return capsys.readouterr().err


def test_a_run_from_another_runs_weights_says_which_validation_images_that_run_may_have_trained_on(tmp_path, capsys):
    data, run = trained_on(photos(tmp_path / "basic"), tmp_path, capsys)
    err = _init_run(tmp_path, run, tmp_path / "same", capsys)  # the same images and seed: the same hold-out
    assert "--init" not in err
    for i in range(8, 12):
        _write(data / "cat" / f"img{i}.png", COLOURS["cat"], (16, 16), tag=f"new{i}")
    err = _init_run(tmp_path, run / "checkpoints" / "last.pt", tmp_path / "new", capsys)  # a checkpoint of the run
    old = set(json.loads((run / "data.json").read_text())["validation"]["files"])
    held = json.loads((tmp_path / "new" / "data.json").read_text())["validation"]["files"]
    moved = [f for f in held if f not in old]
    assert moved  # seed 0 draws another hold-out over the grown folder
    line = next(x for x in err.splitlines() if "--init" in x)
    assert line.startswith(f"resnetlab train: warning: --init {run / 'checkpoints' / 'last.pt'}: {len(moved)} image")
    assert f"of the {len(held)} this run holds out for validation (e.g. {moved[0]})" in line
    assert line.endswith(f"not held out by {run}, which may have trained on them: the hold-out is drawn again over "
                         "the folder as it is now, so this run's validation error is optimistic, and best.pt is chosen "
                         f"on it. Put the images {run / 'data.json'} lists as held out into {data}/val/<class>/ and "
                         f"the class folders into {data}/train/ (a val/ folder is used as it is), so both runs "
                         "validate on images neither trained on")


@pytest.mark.parametrize("text", ["{", "[1, 2]", '{"validation": {"from": "held out of train", "files": 3}}',
                                  '{"validation": {"from": "held out of train", "files": [1]}, "root": "/"}',
                                  '{"validation": "x", "root": 5}', "\udcff"])
def test_a_damaged_or_hostile_data_json_of_the_init_run_is_passed_over(tmp_path, text):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "data.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    bundle = SimpleNamespace(classes=["a", "b"], provenance={
        "root": "/", "validation": {"from": "held out of train", "files": ["a/1.png"]}})
    assert init_holdout_warning(str(run), bundle) is None
    assert init_holdout_warning(str(tmp_path / "nowhere"), bundle) is None
    assert init_holdout_warning("resnet18.tv_in1k", bundle) is None
