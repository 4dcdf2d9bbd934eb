"""`resnetlab train` options that must never surprise: a run length given twice, a --recipe with
--resume, a refused --resume that warns first, counts that read "1 steps", a final test announced
without a test split, and a read-only run folder told to free space."""
import errno
import os
import shutil

import pytest
import yaml
from PIL import Image

from resnetlab.autorecipe import DataFacts, MachineFacts, choose
from resnetlab.cli import main
from resnetlab.config import ScheduleConfig, apply_overrides, config_to_dict, load_config
from resnetlab.engine import checkpoint
from resnetlab.engine.records import LoopState
from resnetlab.engine.schedules import schedule_warnings
from resnetlab.engine.state import check_steps_left
from resnetlab.errors import UserError
from resnetlab.files import StorageError, storage_error
from test_engine_train import tiny_config

LENGTH = "both set the length of the run; keep one"


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 4), ("train.eval_every", 4)))))
    return str(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 4 steps that wrote its checkpoints and summary."""
    return finished_run(tmp_path_factory.mktemp("finished"))


def finished_run(root):
    """ROOT/run, a run of 4 steps made by `resnetlab train` from ROOT/tiny.yaml."""
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config(("schedule.max_steps", 4), ("train.eval_every", 2)))))
    assert main(["train", "--recipe", str(path), "--out", str(root / "run")]) == 0
    return root / "run"


def err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("flags, said", [
    (["--epochs", "3", "--max-steps", "10"], "--epochs 3 and --max-steps 10"),
    (["--epochs", "3", "--set", "schedule.max_steps=10"], "--epochs 3 and --set schedule.max_steps=10"),
    (["--max-steps", "10", "--set", "schedule.epochs=3"], "--set schedule.epochs=3 and --max-steps 10"),
    (["--set", "schedule.epochs=3", "--set", "schedule.max_steps=10"],
     "--set schedule.epochs=3 and --set schedule.max_steps=10"),
], ids=["flags", "epochs-flag-steps-set", "steps-flag-epochs-set", "both-set"])
@pytest.mark.parametrize("print_config", [False, True], ids=["run", "print-config"])
def test_a_run_length_in_epochs_and_in_steps_is_refused_in_one_line(recipe, tmp_path, capsys, flags, said,
                                                                    print_config):
    # --max-steps used to clear --epochs without a word (and both --set: epochs won without a word)
    out = tmp_path / "run"
    argv = ["train", "--recipe", recipe, "--out", str(out), *flags] + (["--print-config"] if print_config else [])
    assert main(argv) == 2
    assert err_lines(capsys) == [f"resnetlab train: error: {said} {LENGTH} (epochs count passes over the training "
                                 "data, max steps count optimizer steps)"]
    assert not out.exists()


def test_one_run_length_is_taken_as_given(recipe, capsys):
    for flags, length in ((["--max-steps", "10"], (10, None)), (["--epochs", "3"], (4, 3)),
                          (["--set", "schedule.epochs=null", "--set", "schedule.max_steps=10"], (10, None))):
        assert main(["train", "--recipe", recipe, "--print-config", *flags]) == 0
        schedule = yaml.safe_load(capsys.readouterr().out)["schedule"]
        assert (schedule["max_steps"], schedule["epochs"]) == length, flags


def test_in_a_list_of_overrides_the_later_run_length_decides():
    # [epochs, max_steps] used to keep the epochs: the max_steps given after them was silently ignored
    later = load_config("cifar10_fast", ["schedule.epochs=3", "schedule.max_steps=200"])
    assert (later.schedule.max_steps, later.schedule.epochs) == (200, None)
    cfg = apply_overrides(load_config("cifar10_fast"), [("schedule.max_steps", 200), ("schedule.epochs", 2)])
    assert (cfg.schedule.max_steps, cfg.schedule.epochs) == (200, 2)


@pytest.mark.parametrize("given", ["", "cifar10_fast", "tiny.yaml"])
def test_resume_with_a_recipe_is_refused_even_an_empty_one(finished, capsys, given):
    # `--resume RUN --recipe ""` was silently ignored (the empty name is false), unlike any other name
    assert main(["train", "--resume", str(finished), "--recipe", given]) == 2
    assert err_lines(capsys) == ["resnetlab train: error: --resume continues a run with its own config; drop --recipe "
                                 "(use --set to change values)"]


def test_a_refused_shorter_resume_says_only_why(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    # a new schedule is warned about only once the resumed run has accepted it
    assert main(["train", "--resume", str(run), "--max-steps", "2"]) == 2
    assert err_lines(capsys) == [f"resnetlab train: error: {run} is already at step 4, past --max-steps 2; a run "
                                 "cannot be shortened (pass --max-steps above 4 to train further)"]
    assert main(["train", "--resume", str(run), "--max-steps", "6"]) == 0
    assert [line for line in err_lines(capsys) if "warning" in line] == [
        "resnetlab train: warning: --resume with a new schedule (schedule.max_steps: 4 -> 6): the schedule is "
        "recomputed from the current step"]


def test_counts_of_one_read_in_the_singular(finished, tmp_path):
    warm = schedule_warnings(ScheduleConfig(kind="constant", max_steps=1, warmup_steps=1), 1)
    assert warm and "the run has 1 step (1 per epoch)" in warm[0] and "1 steps" not in warm[0]
    late = schedule_warnings(ScheduleConfig(kind="step", max_steps=1, milestones=[1]), 1)
    assert "the run has 1 step (" in late[0]
    cfg = tiny_config(("schedule.epochs", 1))
    with pytest.raises(UserError, match=r"past the 1 step of schedule.epochs=1;"):
        check_steps_left(LoopState(step=3), 1, cfg, tmp_path)
    facts = DataFacts("folder", train_images=1, num_classes=1, has_val=False, short_side=300, small=False)
    assert facts.describe().startswith("1 photo in 1 class (")
    small = DataFacts("folder", train_images=40, num_classes=4, has_val=False, short_side=32, small=True)
    line = choose(small, MachineFacts(cpus=2, gpu=False), {"schedule.max_steps": 4, "schedule.epochs": None}).line
    assert "warm-up 1 step," in line and "4 steps" in line


def test_the_model_line_of_a_one_step_run(tmp_path, recipe, capsys):
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    said = "".join(capsys.readouterr())
    assert "resnet8: 1 step (8/epoch)" in said and "1 steps" not in said


@pytest.fixture
def train_only(tmp_path):
    """A folder dataset with train/ only: no test split."""
    for c, colour in enumerate(("red", "green")):
        (tmp_path / "photos" / "train" / str(c)).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), colour).save(tmp_path / "photos" / "train" / str(c) / f"{i}.jpg")
    return tmp_path / "photos"


def test_no_final_test_is_announced_without_a_test_split(tmp_path, recipe, train_only, capsys):
    argv = ["train", "--recipe", recipe, "--data", str(train_only), "--out", str(tmp_path / "run"),
            "--set", "data.dataset=folder", "--set", "data.val_size=2", "--set", "optim.batch_size=4",
            "--set", "train.test_protocol=flip", "--max-steps", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "final test" not in out + err and '"test": {}' in out


def read_only(monkeypatch, code=errno.EROFS):
    """Every checkpoint write refused as a read-only folder (or another errno) refuses it: the tests
    run as root, whom a chmod does not stop."""
    def refuse(self, data):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(checkpoint._WriteAll, "write", refuse)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_run_folder_is_not_told_to_free_space(tmp_path, recipe, monkeypatch, capsys, code):
    read_only(monkeypatch, code)
    run = tmp_path / "run"
    assert main(["train", "--recipe", recipe, "--out", str(run)]) == 2
    reason = os.strerror(code)
    assert err_lines(capsys)[-1] == (
        f"resnetlab train: error: could not write {run / 'checkpoints' / 'last.pt'} ({reason}); nothing was written "
        f"there. {run} is not writable (read-only or no permission): make it writable, then start the run again")


def test_the_advice_follows_the_cause_of_a_refused_write(tmp_path):
    from resnetlab.engine.state import storage_refusal

    def refusal(err):
        return str(storage_refusal(err, tmp_path))

    for code, words in ((errno.ENOSPC, "Free some space, then"), (errno.EDQUOT, "Free some space, then"),
                        (errno.EROFS, "is not writable"), (errno.EPERM, "is not writable"),
                        (errno.EIO, "Once it can be written, start the run again")):
        try:  # as files.storage_errors raises it: the OSError as its cause
            raise storage_error(tmp_path / "x", os.strerror(code), False) from OSError(code, "")
        except StorageError as err:
            assert words in refusal(err) and refusal(err).count(". ") == 1, (code, refusal(err))
    # without a cause (raised `from None`), its reason tells
    assert "is not writable" in refusal(storage_error(tmp_path / "x", os.strerror(errno.EROFS), False))
    assert "Free some space" in refusal(storage_error(tmp_path / "x", os.strerror(errno.ENOSPC), False))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert refusal(storage_error(tmp_path / "x", "No space left on device", True)).endswith(
        "then continue with resume=True")  # a Python caller's words; `resnetlab train` says --resume RUN
