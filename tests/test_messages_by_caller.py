"""A message says what to change in its reader's terms: the command's options under `resnetlab`
(--resume, --out, --set), the arguments and config keys for a Python caller, who cannot pass a flag
(errors.option). The same mistake is made through main([...]) and then through the Python API in
the same process: each gets its own words, and the command's words end with the command."""
import io
import warnings

import pytest
import torch

import resnetlab
from resnetlab.cli import main
from resnetlab.config import apply_overrides, load_config
from resnetlab.engine import runtime, train_and_evaluate
from resnetlab.errors import UserError, command_line, option
from resnetlab.inference.export import export_checkpoint
from test_train_options import finished_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(recipe, run): a run of 4 steps that wrote its checkpoints and summary, made by `resnetlab train`."""
    run = finished_run(tmp_path_factory.mktemp("said"))
    return str(run.parent / "tiny.yaml"), run


def error(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def python_error(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    return str(err.value)


def test_option_is_the_command_words_only_inside_a_command():
    assert option("--out", "workdir") == "workdir"
    with pytest.raises(RuntimeError), command_line():
        assert option("--out", "workdir") == "--out"
        with command_line():
            assert option("--out", "workdir") == "--out"
        assert option("--out", "workdir") == "--out"  # the inner block restored the outer one's value
        raise RuntimeError
    assert option("--out", "workdir") == "workdir"  # restored on the way out of an error too


def test_an_existing_run_started_again(trained, capsys):
    recipe, run = trained
    assert error(capsys, "train", "--recipe", recipe, "--out", str(run)) == (
        f"resnetlab train: error: {run} already holds a run (checkpoints/last.pt); continue it with --resume {run} or "
        "choose another --out\n")
    assert python_error(lambda: train_and_evaluate(load_config(recipe), run)) == (
        f"{run} already holds a run (checkpoints/last.pt); continue it with resume=True or choose another workdir")


def test_a_resume_of_nothing(trained, tmp_path, capsys):
    recipe, _ = trained
    assert error(capsys, "train", "--resume", str(tmp_path)) == (  # the command looks for the run's config first
        f"resnetlab train: error: --resume {tmp_path}: no config.yaml there; is it a run directory?\n")
    resume = lambda: train_and_evaluate(load_config(recipe), tmp_path, resume=True)  # noqa: E731
    assert python_error(resume) == (
        f"resume=True in {tmp_path}: no run there to continue (no config.yaml, no checkpoints/last.pt)")
    with command_line():  # the library's own check, in the words a command would print
        assert python_error(resume) == (
            f"--resume {tmp_path}: no run there to continue (no config.yaml, no checkpoints/last.pt)")


def test_a_finished_run_resumed(trained, capsys):
    recipe, run = trained
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert capsys.readouterr().err == (f"{run} finished at step 4: nothing to resume (pass a larger --max-steps to "
                                       "train further)\n")
    said = io.StringIO()
    assert train_and_evaluate(load_config(recipe), run, resume=True, stream=said).steps == 4
    assert said.getvalue() == (f"{run} finished at step 4: nothing to resume (set a larger schedule.max_steps to "
                               "train further)\n")


def test_a_folder_dataset_without_data_root(trained, tmp_path, capsys):
    recipe, _ = trained
    assert error(capsys, "train", "--recipe", recipe, "--set", "data.dataset=folder", "--out", str(tmp_path / "a")) == (
        "resnetlab train: error: data.root is not set; pass --data ROOT with ROOT/train/<class>/<image>\n")
    cfg = apply_overrides(load_config(recipe), [("data.dataset", "folder")])
    assert python_error(lambda: train_and_evaluate(cfg, tmp_path / "b")) == (
        "data.root is not set; give the override data.root=ROOT with ROOT/train/<class>/<image>")


def test_cuda_asked_for_where_there_is_none(trained, monkeypatch, capsys):
    _, run = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert error(capsys, "predict", str(run), str(run), "--device", "cuda") == (
        "resnetlab predict: error: device 'cuda': CUDA is not available here; use --device cpu or auto\n")
    assert python_error(lambda: resnetlab.load(run, device="cuda")) == (
        "device 'cuda': CUDA is not available here; use device=\"cpu\" or \"auto\" (train.device=cpu to train)")


def test_an_export_of_the_wrong_suffix(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "m.pt"
    assert error(capsys, "export", str(run), "--format", "onnx", "--out", str(out)) == (
        f"resnetlab export: error: --out {out}: an ONNX export should end in .onnx\n")
    assert python_error(lambda: export_checkpoint(run, "onnx", out)) == f"out {out}: an ONNX export should end in .onnx"


def test_an_override_without_a_value(trained, tmp_path, capsys):
    recipe, _ = trained
    assert error(capsys, "train", "--recipe", recipe, "--set", "schedule.epochs", "--out", str(tmp_path)) == (
        "resnetlab train: error: --set 'schedule.epochs': expected SECTION.KEY=VALUE, e.g. --set optim.lr=0.05\n")
    assert python_error(lambda: load_config(recipe, ["schedule.epochs"])) == (
        "override 'schedule.epochs': expected 'SECTION.KEY=VALUE' (e.g. 'optim.lr=0.05') or a (key, value) pair")


def test_a_run_past_the_steps_asked_for(trained, capsys):
    recipe, run = trained
    assert error(capsys, "train", "--resume", str(run), "--max-steps", "1") == (
        f"resnetlab train: error: {run} is already at step 4, past --max-steps 1; a run cannot be shortened (pass "
        "--max-steps above 4 to train further)\n")
    cfg = apply_overrides(load_config(recipe), [("schedule.max_steps", 1)])
    assert python_error(lambda: train_and_evaluate(cfg, run, resume=True)) == (
        f"{run} is already at step 4, past schedule.max_steps=1; a run cannot be shortened (set schedule.max_steps "
        "above 4 to train further)")


def test_load_takes_paths_as_a_shell_would(trained, monkeypatch):
    _, run = trained
    assert python_error(lambda: resnetlab.load("")) == (
        "the run directory or checkpoint is blank (''; an unset variable?)")  # it loaded the current folder
    monkeypatch.setenv("HOME", str(run.parent))
    assert resnetlab.load("~/run", precision="fp32").classes == resnetlab.load(run, precision="fp32").classes
    torch.save(resnetlab.create_model("resnet8").state_dict(), run.parent / "w.pt")
    assert resnetlab.load_weights(resnetlab.create_model("resnet8"), "~/w.pt").skipped == []
    assert python_error(lambda: resnetlab.load(run, device=None)) == (
        "device None (NoneType) is not one resnetlab runs on; use auto | cpu | cuda | cuda:N")


def test_predict_refuses_a_dict_and_a_set(trained):
    _, run = trained
    model = resnetlab.load(run, precision="fp32")
    assert python_error(lambda: model.predict({"a.jpg": 1})) == (
        "images must be a path, a folder, a PIL image or a list of them; got a dict, whose keys would be taken for "
        "images: pass a list")
    assert python_error(lambda: model.predict({"a.jpg", "b.jpg"})) == (
        "images must be a path, a folder, a PIL image or a list of them; got a set, which has no order for the results "
        "to follow: pass a list")


def test_the_emulated_precision_warning_points_at_the_callers_line(trained, monkeypatch):
    _, run = trained
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))  # no fp16 instructions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resnetlab.load(run, device="cpu", precision="fp16")
    ours = [w for w in caught if "no fp16 instructions" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__, [(w.filename, w.lineno) for w in caught]
