"""The `data` command: summary of a folder or CIFAR directory, listing of skipped files."""
import argparse
import json

import pytest
from PIL import Image

from resnetlab.cli import data as data_cmd
from resnetlab.errors import UserError


def _run(argv, capsys):
    parser = argparse.ArgumentParser()
    data_cmd.add_arguments(parser)
    code = data_cmd.run(parser.parse_args(argv))
    return code, capsys.readouterr().out


def test_folder_summary_and_skipped_files(tmp_path, capsys):
    for name in ("ant", "bee"):
        for i in range(3):
            (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / "train" / name / f"{i}.png")
    (tmp_path / "train" / "bee" / "broken.png").write_bytes(b"no")
    with pytest.raises(UserError, match="broken.png"):
        _run([str(tmp_path), "--cache-dir", str(tmp_path / "c")], capsys)
    code, out = _run([str(tmp_path), "--skip-bad", "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 0 and out.splitlines()[0].startswith("folder: train 6 images, 2 classes, 16x16 in memory")
    assert "skipped" in out and "broken.png" in out
    code, out = _run([str(tmp_path), "--skip-bad", "--json", "--cache-dir", str(tmp_path / "c")], capsys)
    report = json.loads(out)
    assert report["classes"] == ["ant", "bee"] and report["sizes"] == {"train": 6} and len(report["skipped"]) == 1


def test_missing_cifar_says_where_to_put_it(tmp_path, capsys):
    with pytest.raises(UserError, match=f"not found in {tmp_path}"):
        _run([str(tmp_path), "--dataset", "cifar10"], capsys)
    code, out = _run(["--dataset", "synthetic"], capsys)
    assert out.startswith("synthetic: train 1024, test 1024 images")


def test_verify_lists_photos_damaged_past_their_header(tmp_path, capsys):
    """Photos (> 64 px) are checked by their headers: a JPEG cut short was neither listed nor counted."""
    import io

    for name in ("ant", "bee"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (96, 72), (40 * i, 90, 0)).save(tmp_path / "train" / name / f"{i}.jpg")
    jpeg = io.BytesIO()
    Image.effect_noise((96, 72), 60).convert("RGB").save(jpeg, "JPEG")
    (tmp_path / "train" / "bee" / "cut.jpg").write_bytes(jpeg.getvalue()[:900])  # the header reads
    code, out = _run([str(tmp_path), "--skip-bad"], capsys)
    assert code == 0 and "train 9 images" in out and "cut.jpg" not in out
    assert "photos checked by their headers" in out and "--verify decodes every photo" in out
    code, out = _run([str(tmp_path), "--skip-bad", "--verify"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("folder: train 8 images") and "1 bad file skipped" in out
    assert f"  skipped {tmp_path / 'train' / 'bee' / 'cut.jpg'}: truncated or corrupt image" in out
    assert "photos checked by their headers" not in out
    report = json.loads(_run([str(tmp_path), "--skip-bad", "--verify", "--json"], capsys)[1])
    assert report["sizes"] == {"train": 8} and report["decoded_whole"] and len(report["skipped"]) == 1
    with pytest.raises(UserError, match="cut.jpg: truncated or corrupt image"):  # its sample for the normaliser
        _run([str(tmp_path), "--verify"], capsys)
