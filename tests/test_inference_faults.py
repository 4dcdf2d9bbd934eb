"""predict, embed and export against their own inputs, a directory in the way and SIGTERM: one line,
exit 2 (143 for SIGTERM), and nothing the user had is overwritten."""
import os
import signal

import pytest
from test_predict_synthetic import train_tiny_run

import resnetlab.inference.embed
import resnetlab.inference.inputs as inputs_module
from resnetlab.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("inference_faults"))


def test_an_export_or_embed_over_the_checkpoint_it_reads_is_refused(run_dir, tmp_path, capsys):
    """`export RUN --out RUN/checkpoints/best.pt` replaced the run's weights with TorchScript."""
    best = run_dir / "checkpoints" / ("best.pt" if (run_dir / "checkpoints" / "best.pt").is_file() else "last.pt")
    before = best.read_bytes()
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(best)]) == 2
    assert capsys.readouterr().err == (f"resnetlab export: error: --out {best} is the checkpoint being read; write the "
                                       "output to another file\n")
    other = run_dir / "checkpoints" / "model.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(other)]) == 2
    assert capsys.readouterr().err == (f"resnetlab export: error: --out {other} is in the checkpoints of the run "
                                       f"{run_dir}; write the output elsewhere\n")
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    assert main(["embed", str(run_dir), str(image), "--out", str(run_dir / "checkpoints" / "e.safetensors")]) == 2
    assert "is in the checkpoints of the run" in capsys.readouterr().err
    assert best.read_bytes() == before and not other.exists()


def test_embed_onto_a_directory_keeps_the_old_names_file_and_writes_nothing(run_dir, tmp_path, capsys):
    """The names file was renamed into place first, then the .npy failed: old names beside no array."""
    (tmp_path / "keep.npy").mkdir()
    (tmp_path / "keep.names.txt").write_text("OLD NAMES\n")
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    assert main(["embed", str(run_dir), str(image), "--out", str(tmp_path / "keep.npy")]) == 2
    assert capsys.readouterr().err == (f"resnetlab embed: error: could not write {tmp_path / 'keep.npy'} (Is a "
                                       "directory); nothing was written there\n")
    assert (tmp_path / "keep.names.txt").read_text() == "OLD NAMES\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.names.txt", "keep.npy"]


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_sigterm_ends_a_command_in_one_line_with_143(run_dir, tmp_path, monkeypatch, capsys, command):
    """SIGTERM took the default action: status 143 and not a word; Ctrl-C already said 'interrupted'."""
    collect = inputs_module.collect_images

    def collect_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return collect(*args, **kwargs)

    monkeypatch.setattr(inputs_module, "collect_images", collect_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    extra = ["--out", str(tmp_path / "e.npy")] if command == "embed" else []
    assert main([command, str(run_dir), str(run_dir.parent / "data" / "test"), *extra]) == 143
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"resnetlab {command}: terminated\n")
    assert signal.getsignal(signal.SIGTERM) == before and list(tmp_path.iterdir()) == []


def test_a_file_name_with_a_newline(run_dir, tmp_path, capsys):
    """predict's text lines split such a name in two; embed refused it after all the work, even for
    .safetensors, which holds names as JSON."""
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    odd = tmp_path / "new\nline.jpg"
    odd.write_bytes(image.read_bytes())
    assert main(["predict", str(run_dir), str(odd)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and out.startswith(f"{tmp_path}/new\\nline.jpg  ")
    escape = tmp_path / "a\x1b]0;PWNED\x07b.jpg"  # a terminal's title set by a file name
    escape.write_bytes(image.read_bytes())
    broken = tmp_path / "bro\nken.jpg"
    broken.write_text("not an image")
    assert main(["predict", str(run_dir), str(escape), str(broken)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{tmp_path}/a\\x1b]0;PWNED\\x07b.jpg  ") and "\x1b" not in out + err
    assert err == f"resnetlab predict: warning: skipped {tmp_path}/bro\\nken.jpg: not an image Pillow can read\n"
    assert main(["embed", str(run_dir), str(odd), "--out", str(tmp_path / "e.npy")]) == 2
    assert capsys.readouterr().err == (f"resnetlab embed: error: the file name {str(odd)!r} contains a newline, which "
                                       "FILE.names.txt cannot hold; write .safetensors (names as JSON) instead of .npy\n")
    assert main(["embed", str(run_dir), str(odd), "--out", str(tmp_path / "e.safetensors")]) == 0
    assert resnetlab.inference.embed.load_embeddings(tmp_path / "e.safetensors")[0] == [str(odd)]


def test_eval_out_replaces_an_earlier_evaluation_but_never_the_users_files_of_the_same_names(run_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "confusion.csv").write_text("my hand-made confusion matrix\n")
    (out / "notes.txt").write_text("mine\n")
    assert main(["eval", str(run_dir), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"resnetlab eval: error: --out {out} already holds confusion.csv, not written by "
                                       "an evaluation; give a new folder, or one of an earlier evaluation\n")
    assert (out / "confusion.csv").read_text() == "my hand-made confusion matrix\n"
    (out / "confusion.csv").unlink()
    assert main(["eval", str(run_dir), "--out", str(out)]) == 0  # beside other files: nothing of theirs replaced
    assert main(["eval", str(run_dir), "--out", str(out), "--protocol", "flip"]) == 0  # an evaluation's: replaced
    assert sorted(p.name for p in out.iterdir()) == ["confusion.csv", "confusion.png", "notes.txt", "per_class.csv"]
    assert (out / "notes.txt").read_text() == "mine\n"
    (out / "per_class.csv").write_text("a,b\n")
    assert main(["eval", str(run_dir), "--out", str(out)]) == 2
    assert "already holds per_class.csv, not written by an evaluation" in capsys.readouterr().err


def test_int8_calibration_names_the_images_it_skipped_and_an_empty_folder(run_dir, tmp_path, capsys):
    """It calibrated on the readable ones without a word (agreement fell to 70%), and an empty folder was
    'none of the 0 calibration images could be read'."""
    image = next((run_dir.parent / "data" / "test").rglob("*.jpg"))
    calibrate = tmp_path / "calibrate"
    (calibrate / "empty").mkdir(parents=True)
    (calibrate / "a.jpg").write_text("not an image")
    (calibrate / "b.jpg").write_bytes(image.read_bytes())
    assert main(["predict", str(run_dir), str(image), "--precision", "int8", "--calibrate", str(calibrate)]) == 0
    assert f"resnetlab predict: warning: int8 calibration skipped {calibrate / 'a.jpg'}: not an image Pillow can read" \
        in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(image), "--precision", "int8", "--calibrate", str(calibrate / "empty")]) == 2
    assert capsys.readouterr().err.startswith(f"resnetlab predict: error: --calibrate: no image files found in "
                                              f"{calibrate / 'empty'} (none ending in ")
