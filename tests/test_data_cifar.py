"""CIFAR official format: load from folder or archive, download from a local server, MD5 checks."""
import functools
import hashlib
import http.server
import io
import pickle
import pickletools
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch

from resnetlab.config import DataConfig
from resnetlab.data import build_data, load_cifar
from resnetlab.errors import UserError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"


class _Python2Pickler(pickle._Pickler):
    """Writes what the official files hold: cPickle protocol 2 from Python 2, where every string
    is a byte string (BINSTRING) and numpy lives at numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_py2_str


def official_pickle(obj) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch(seed, n=20):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}


def _fake_archive(path):
    """A tiny archive with the official layout: data_batch_1..5, test_batch, batches.meta."""
    files = {f"data_batch_{i}": _batch(i) for i in range(1, 6)}
    files["test_batch"] = _batch(9)
    files["batches.meta"] = {b"num_cases_per_batch": 20, b"label_names": [f"c{i}".encode() for i in range(10)],
                             b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            blob = official_pickle(obj)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return files


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "server"
    src.mkdir()
    files = _fake_archive(src / ARCHIVE)
    return src / ARCHIVE, files


def _check(train, test, files):
    expected = np.concatenate([files[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((files[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert len(test) == 20 and train.classes == [f"c{i}" for i in range(10)]


def test_load_from_archive_with_its_md5_then_from_folder(tmp_path, archive):
    path, files = archive
    root = tmp_path / "data"
    root.mkdir()
    (root / ARCHIVE).write_bytes(path.read_bytes())
    _check(*load_cifar("cifar10", root, md5=_md5(path)), files)
    (root / ARCHIVE).unlink()  # now only the extracted folder
    _check(*load_cifar("cifar10", root), files)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_user_archive_with_wrong_md5_is_rejected(tmp_path, archive):
    (tmp_path / ARCHIVE).write_bytes(archive[0].read_bytes())
    with pytest.raises(UserError, match="MD5"):
        load_cifar("cifar10", tmp_path)  # the official MD5
    assert not (tmp_path / FOLDER).exists()


def test_download_from_file_url(tmp_path, archive):
    path, files = archive
    root = tmp_path / "cache"
    _check(*load_cifar("cifar10", root, download=True, url=path.as_uri(), md5=_md5(path)), files)
    assert (root / ARCHIVE).is_file() and (root / FOLDER).is_dir()


def test_download_from_local_http_server_and_wrong_md5(tmp_path, archive):
    path, files = archive
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}"
    try:
        bad = tmp_path / "bad"
        with pytest.raises(UserError, match="MD5"):
            load_cifar("cifar10", bad, download=True, url=url, md5="0" * 32)
        assert list(bad.iterdir()) == []  # a rejected download leaves nothing behind
        _check(*load_cifar("cifar10", tmp_path / "good", download=True, url=url, md5=_md5(path)), files)
    finally:
        server.shutdown()
        server.server_close()


def test_offline_and_missing_say_where_to_put_the_archive(tmp_path):
    with pytest.raises(UserError, match=rf"could not download {ARCHIVE} .*put it at {tmp_path / ARCHIVE}$"):
        load_cifar("cifar10", tmp_path, download=True, url="http://127.0.0.1:9/none.tar.gz")
    with pytest.raises(UserError, match=f"not found in {tmp_path}.*set data.download=true"):
        build_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_incomplete_folder_is_reported(tmp_path, archive):
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "data_batch_1").write_bytes(b"x")
    with pytest.raises(UserError, match="incomplete.*data_batch_2"):
        load_cifar("cifar10", tmp_path)


def test_build_data_carves_val_and_keeps_official_test(tmp_path, archive):
    path, files = archive
    (tmp_path / ARCHIVE).write_bytes(path.read_bytes())
    load_cifar("cifar10", tmp_path, md5=_md5(path))  # extract once with the fake archive's MD5
    bundle = build_data(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=10), seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (90, 10, 20)
    assert bundle.classes == [f"c{i}" for i in range(10)]
    mean = bundle.normalizer.mean
    assert mean.shape == (3, 32, 32) and torch.allclose(mean, bundle.train.images.double().mean(0).float() / 255)


def test_cifar100_extracted_folder_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 10)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                 b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}
        (folder / name).write_bytes(official_pickle(batch))
    (folder / "meta").write_bytes(official_pickle({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    bundle = build_data(DataConfig(dataset="cifar100", root=str(tmp_path), val_size=0))
    assert len(bundle.classes) == 100 and bundle.classes[7] == "f7"
    assert bundle.train.labels.tolist() == pickle.loads((folder / "train").read_bytes(), encoding="bytes")[b"fine_labels"]
    assert (len(bundle.train), len(bundle.test)) == (30, 10)


# ---------------------------------------------------------------- hostile files: nothing runs

class _Payload:
    """What a hostile mirror hides in a CIFAR file: unpickling it with pickle.load creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _extracted(root, **replace):
    """The official folder under root, with some files' bytes replaced."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    files = {f"data_batch_{i}": _batch(i) for i in range(1, 6)}
    files["test_batch"] = _batch(9)
    files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    for name, obj in files.items():
        (folder / name).write_bytes(replace.get(name) or official_pickle(obj))
    return folder


def test_official_globals_are_the_only_ones_the_fixture_uses():
    names = {arg for op, arg, _ in pickletools.genops(official_pickle(_batch(1))) if op.name == "GLOBAL"}
    assert names == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@pytest.mark.parametrize("where", ["meta-p0", "meta-p2", "meta-p4", "meta-p5", "label-name", "batch-data"])
def test_malicious_pickle_runs_nothing_and_gets_one_line(tmp_path, capsys, where):
    from resnetlab.cli import main

    marker = tmp_path / "pwned"
    evil = {
        "meta-p0": ("batches.meta", pickle.dumps(_Payload(marker), protocol=0)),
        "meta-p2": ("batches.meta", pickle.dumps(_Payload(marker), protocol=2)),
        "meta-p4": ("batches.meta", pickle.dumps({b"label_names": _Payload(marker)}, protocol=4)),
        "meta-p5": ("batches.meta", pickle.dumps(_Payload(marker), protocol=5)),
        "label-name": ("batches.meta", pickle.dumps({b"label_names": [b"cat", _Payload(marker)]}, protocol=2)),
        "batch-data": ("data_batch_3", pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2)),
    }[where]
    root = tmp_path / "mirror"
    _extracted(root, **{evil[0]: evil[1]})
    for argv in (["data", str(root), "--dataset", "cifar10"],
                 ["train", "--recipe", "cifar10_resnet20", "--data", str(root), "--out", str(tmp_path / "run"),
                  "--max-steps", "1", "--device", "cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"refuses to run code from {root / FOLDER / evil[0]}" in err
        assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_python3_resave_of_the_official_dict_loads_equal(tmp_path, protocol):
    """A mirror that re-pickled the files with Python 3 (bytes via _codecs.encode at protocol 2)."""
    from resnetlab.data.cifar_pickle import read_cifar_pickle

    batch = _batch(3)
    loaded = read_cifar_pickle(io.BytesIO(pickle.dumps(batch, protocol=protocol)))
    assert loaded.keys() == batch.keys() and np.array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"] == batch[b"labels"] and loaded[b"filenames"] == batch[b"filenames"]


@pytest.mark.parametrize("obj, words", [
    ({b"data": np.zeros((2, 3), dtype=np.int64)}, "numpy dtype 'i8'"),  # only uint8 images
    ({b"data": np.array([1, "a"], dtype=object)}, "dtype"),
    ({b"labels": list(np.arange(3))}, "scalar"),  # numpy scalars: not in the official files
    ({b"labels": [[1, 2]]}, "a list item is a list"),
    ([1, 2], "not the dict"),
    ({b"data": np.zeros((2, 3), dtype=np.uint8).T}, "C-ordered"),
])
def test_other_objects_are_refused(obj, words):
    from resnetlab.data.cifar_pickle import RefusedPickle, read_cifar_pickle

    with pytest.raises(RefusedPickle, match=words):
        read_cifar_pickle(io.BytesIO(pickle.dumps(obj, protocol=2)))


def test_truncated_file_is_one_line_naming_it(tmp_path):
    folder = _extracted(tmp_path, test_batch=official_pickle(_batch(9))[:500])
    with pytest.raises(UserError, match=f"cannot read CIFAR file {folder / 'test_batch'}"):
        load_cifar("cifar10", tmp_path)


def test_a_class_name_with_a_control_character_in_the_meta_file_is_refused(tmp_path):
    """ESC sequences in batches.meta reached the terminal raw (recoloured it, set its title); a newline faked
    predict's one line per image. Class folders with them are refused; so are these."""
    names = [f"c{i}".encode() for i in range(10)]
    names[3] = b"\x1b[31mred\x1b[0m"
    folder = _extracted(tmp_path, **{"batches.meta": official_pickle({b"label_names": names})})
    with pytest.raises(UserError, match=r"batches.meta: the class name '\\x1b\[31mred\\x1b\[0m' holds a control char"):
        load_cifar("cifar10", folder.parent)
