"""CIFAR official format: load from folder or archive, download from a local server, MD5 checks."""
import functools
import hashlib
import http.server
import io
import pickle
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


def _batch(seed, n=20):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


def _fake_archive(path):
    """A tiny archive with the official layout: data_batch_1..5, test_batch, batches.meta."""
    files = {f"data_batch_{i}": _batch(i) for i in range(1, 6)}
    files["test_batch"] = _batch(9)
    files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            blob = pickle.dumps(obj)
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
    with pytest.raises(UserError, match=f"place {ARCHIVE} in {tmp_path}"):
        load_cifar("cifar10", tmp_path, download=True, url="http://127.0.0.1:9/none.tar.gz")
    with pytest.raises(UserError, match=f"not found in {tmp_path}.*--download"):
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
                 b"fine_labels": list(rng.integers(0, 100, n)), b"coarse_labels": list(rng.integers(0, 20, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    bundle = build_data(DataConfig(dataset="cifar100", root=str(tmp_path), val_size=0))
    assert len(bundle.classes) == 100 and bundle.classes[7] == "f7"
    assert bundle.train.labels.tolist() == pickle.loads((folder / "train").read_bytes())[b"fine_labels"]
    assert (len(bundle.train), len(bundle.test)) == (30, 10)
