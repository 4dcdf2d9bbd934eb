"""A zip-deflate bomb as a checkpoint or weights file: torch's zip reader inflates DEFLATE records in memory
before any check (2 MB of deflated zeros was 2.3 GB of RAM), so the zip's directory is judged first and such
a file is refused in one line before torch.load sees it. A torch.save file, and a re-zipped copy, still load."""
import zipfile

import pytest
import torch
from PIL import Image

from resnetlab import UserError, create_model, load_weights
from resnetlab.cli import main
from resnetlab.engine.checkpoint import load_checkpoint, stored_config

BOMB_MIB = 64  # far past twice the ~70 KB file and 1 MiB: refused, so never inflated


def _rezip(src, dst, compression, bomb=False):
    """dst: src's records compressed with `compression`; with `bomb`, its first tensor's data is BOMB_MIB of
    zeros (deflated, a 1000:1 ratio), written in 1 MiB pieces to keep the test light."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression) as new:
        for info in old.infolist():
            if bomb and info.filename.endswith("/data/0"):
                with new.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(BOMB_MIB):
                        f.write(bytes(2**20))
            else:
                new.writestr(info.filename, old.read(info.filename))
    return dst


@pytest.fixture
def no_torch_load(monkeypatch):
    def inflating(*args, **kwargs):
        raise AssertionError("torch.load was called on a zip bomb: it would have inflated it in memory")
    monkeypatch.setattr(torch, "load", inflating)


def test_torch_save_writes_every_record_stored(tmp_path):
    """The premise of the limit: torch.save's records are never compressed, small files included."""
    for obj in ({}, {"w": torch.zeros(3)}, create_model("resnet8").state_dict()):
        torch.save(obj, tmp_path / "x.pt")
        with zipfile.ZipFile(tmp_path / "x.pt") as archive:
            assert {r.compress_type for r in archive.infolist()} == {zipfile.ZIP_STORED}


def test_a_deflate_bomb_is_refused_before_torch_load(tmp_path, capsys, no_torch_load):
    torch.save(create_model("resnet8", num_classes=3).state_dict(), tmp_path / "real.pt")
    bomb = _rezip(tmp_path / "real.pt", tmp_path / "bomb.pt", zipfile.ZIP_DEFLATED, bomb=True)
    assert bomb.stat().st_size < 2**20
    said = rf"bomb.pt would unpack to {BOMB_MIB:,} MiB in memory from 0.\d MiB on disk, .*: refused as a zip bomb"
    with pytest.raises(UserError, match=said):
        load_weights(create_model("resnet8", num_classes=3), bomb)
    with pytest.raises(UserError, match=said):
        load_checkpoint(bomb)
    assert stored_config(bomb) is None
    Image.new("RGB", (32, 32)).save(tmp_path / "img.jpg")
    assert main(["predict", str(bomb), str(tmp_path / "img.jpg"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would unpack to 64 MiB" in err and str(bomb) in err


def test_stored_records_whose_directory_claims_more_than_the_file_are_refused(tmp_path, no_torch_load):
    """Sizes in the directory bound what torch allocates: a record claiming 64 MiB of a small file is refused
    too, as are many records pointing at the same bytes (a bomb without compression)."""
    torch.save(create_model("resnet8").state_dict(), tmp_path / "real.pt")
    data = bytearray((tmp_path / "real.pt").read_bytes())
    entry = data.index(b"PK\x01\x02")  # the central directory's entries: 46 bytes, then the name
    while not data[entry + 46:entry + 46 + int.from_bytes(data[entry + 28:entry + 30], "little")].endswith(b"data/0"):
        entry = data.index(b"PK\x01\x02", entry + 4)
    size = BOMB_MIB * 2**20
    data[entry + 24:entry + 28] = size.to_bytes(4, "little")  # the record's uncompressed size
    (tmp_path / "lies.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"lies.pt would unpack to {BOMB_MIB:,} MiB"):
        load_weights(create_model("resnet8"), tmp_path / "lies.pt")


def test_a_torch_save_file_and_a_deflated_copy_of_it_still_load(tmp_path):
    model = create_model("resnet8", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "real.pt")
    copy = _rezip(tmp_path / "real.pt", tmp_path / "copy.pt", zipfile.ZIP_DEFLATED)
    for path in (tmp_path / "real.pt", copy):
        fresh = create_model("resnet8", num_classes=3)
        assert len(load_weights(fresh, path).loaded) == len(model.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
