"""Downloads (resnetlab/downloads.py) from servers that send without end, announce more than the
file is, or drip a byte at a time: weights (models/hub.py, against the published size) and CIFAR
archives (data/cifar.py), through the one loop both use. Each ends in one line and leaves nothing
behind; a cached file that was there stays as it was. The same on a thread other than the main one,
and on Ctrl-C. The drip tests run on a clock that ticks per look (test_hub_faults.ticking): their
outcome does not depend on how fast the machine is.

The endless server stops after 64 MB per connection, so that a download without a limit ends too
(in a hash or MD5 error) instead of filling the disk: these tests then fail rather than hang."""
import hashlib
import threading
from dataclasses import replace

import pytest
from reference_resnets import akamaster_file
import test_hub
from test_hub import HOST, cache_files, publish
from test_hub_faults import Trickling, ticking

from resnetlab import UserError, downloads
from resnetlab.data import cifar, load_cifar
from resnetlab.models import hub

server = test_hub.server  # the loopback mirror fixture of test_hub.py
ENDLESS = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"  # no Content-Length: the body ends when the server hangs up
ANNOUNCED = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n"  # a terabyte


class Endless(Trickling):
    """Reads the request, sends `head` and then bytes until the client hangs up (or `most` bytes); counts them."""

    def __init__(self, head: bytes, most: int = 64 << 20):
        self.most, self.sent = most, 0
        super().__init__(head)

    def trickle(self, conn):  # on a thread of its own for each connection
        try:
            conn.recv(1 << 16)
            conn.sendall(self.head)
            for _ in range(self.most >> 16):
                conn.sendall(b"x" * (1 << 16))
                self.sent += 1 << 16
            conn.close()
        except OSError:
            return


@pytest.fixture
def endless(request):
    srv = Endless(request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("endless", [ENDLESS, ANNOUNCED], ids=["sends-without-end", "announces-a-terabyte"],
                         indirect=True)
def test_weights_stop_at_the_published_size_and_the_damaged_cache_file_stays(server, monkeypatch, endless):
    entry, _ = publish(server, akamaster_file)
    entry = replace(entry, file_size_mb=0.2)  # limit: 0.22 MB and 1 MiB
    hub.cache_dir().mkdir(parents=True)
    damaged = hub.cache_dir() / entry.filename
    damaged.write_bytes(b"an old download, cut short")
    monkeypatch.setenv(hub.MIRROR_ENV, endless.url)
    told = "the server announces 1,000,000.0 MB" if endless.head == ANNOUNCED else "it went on"
    with pytest.raises(UserError, match=rf"\({endless.url}/{HOST}/models/{entry.filename}: {told}, past the "
                                        r"1.3 MB the file may have: not the published file, or a server that sends "
                                        r"without end\). The damaged file there is as it was"):
        hub.fetch(entry, progress=False, replace_damaged=True)
    assert cache_files() == [entry.filename] and damaged.read_bytes() == b"an old download, cut short"
    assert endless.sent < 32 << 20  # not read to the end: the 64 MB the server would send was ended early


@pytest.mark.parametrize("endless", [ENDLESS], indirect=True)
def test_weights_without_a_published_size_stop_at_twice_their_tensors(server, monkeypatch, endless):
    entry, _ = publish(server, akamaster_file)  # akamaster publishes no size: resnet20's 0.27 M values
    monkeypatch.setenv(hub.MIRROR_ENV, endless.url)
    with pytest.raises(UserError, match=r"it went on, past the 18.9 MB the file may have: .*\. Nothing was written"):
        hub.fetch(entry, progress=False)
    assert cache_files() == []


def test_weights_within_their_published_size_still_download(server):
    entry, _ = publish(server, akamaster_file)
    size = (server.httpd.root / HOST / "models" / entry.filename).stat().st_size
    entry = replace(entry, file_size_mb=round(size / 1e6, 1) - 0.05)  # published rounded down, and then some
    assert hub.fetch(entry, progress=False).stat().st_size == size


@pytest.mark.parametrize("endless", [ENDLESS, ANNOUNCED], ids=["sends-without-end", "announces-a-terabyte"],
                         indirect=True)
def test_a_cifar_archive_stops_past_its_published_size_and_leaves_nothing(tmp_path, monkeypatch, endless):
    monkeypatch.setitem(cifar.SPECS, "cifar10", replace(cifar.SPECS["cifar10"], size=1_000_000))  # limit 1.05 MB
    root = tmp_path / "data"
    told = "the server announces 1,000,000.0 MB" if endless.head == ANNOUNCED else "it went on"
    with pytest.raises(UserError, match=rf"^could not download cifar-10-python.tar.gz \({endless.url}/a.tar.gz: "
                                        rf"{told}, past the 1.1 MB the file may have: not the published file, or a "
                                        r"server that sends without end\). Nothing was saved. Without network access"):
        load_cifar("cifar10", root, download=True, url=f"{endless.url}/a.tar.gz")
    assert not root.exists() or list(root.iterdir()) == []
    assert endless.sent < 32 << 20


def test_a_cifar_archive_that_drips_a_byte_at_a_time_is_given_up(tmp_path, monkeypatch):
    """Every read got a byte well within the 60 s stall timeout: the download went on for years."""
    ticking(monkeypatch, downloads.SLOW_S / 4)
    dripping = Trickling(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    try:
        with pytest.raises(UserError, match=rf"\({dripping.url}/a.tar.gz: no 128 kB from the server in 120 s: too "
                                            r"slow, or stalled a byte at a time\). Nothing was saved"):
            load_cifar("cifar10", tmp_path, download=True, url=f"{dripping.url}/a.tar.gz")
    finally:
        dripping.close()
    assert list(tmp_path.iterdir()) == []


def test_a_drip_is_given_up_on_any_thread(tmp_path, monkeypatch):
    """The weights' drip check was a SIGALRM timer, main thread only: elsewhere a drip went on for years."""
    ticking(monkeypatch, downloads.SLOW_S / 4)
    dripping, failed = Trickling(b"HTTP/1.1 200 OK\r\n\r\n"), []

    def worker():
        try:
            downloads.download(f"{dripping.url}/f", tmp_path / "f", 1 << 20, progress=False)
        except downloads.DownloadFailed as err:
            failed.append(str(err))

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(60)
    finally:
        dripping.close()
    assert failed == ["no 128 kB from the server in 120 s: too slow, or stalled a byte at a time"]
    assert list(tmp_path.iterdir()) == []


class Response:
    """What urlopen gives, for downloads' loop: `blocks` in turn (an exception in them is raised there)."""

    def __init__(self, blocks, length=None):
        self.blocks, self.asked = iter(blocks), []
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read1(self, size):
        self.asked.append(size)
        block = next(self.blocks, b"")
        if isinstance(block, BaseException):
            raise block
        return block[:size]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def serve(monkeypatch, response):
    monkeypatch.setattr(downloads, "urlopen", lambda request, timeout: response)


def test_ctrl_c_mid_download_leaves_the_file_there_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"the old file")
    serve(monkeypatch, Response([b"half a ", KeyboardInterrupt()]))
    with pytest.raises(KeyboardInterrupt):
        downloads.download("http://x/f", tmp_path / "f", 100, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == b"the old file"


def test_a_server_is_read_no_more_than_one_byte_past_the_limit(tmp_path, monkeypatch):
    response = Response([b"x" * 60] * 10)
    serve(monkeypatch, response)
    with pytest.raises(downloads.DownloadFailed, match="^it went on, past the 0.0 MB the file may have"):
        downloads.download("http://x/f", tmp_path / "f", 100, progress=False)
    assert response.asked == [101, 41] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_the_digest_is_checked_as_the_file_streams_and_a_wrong_one_leaves_nothing(tmp_path, monkeypatch, algorithm):
    data = b"the published file"
    right = hashlib.new(algorithm, data).hexdigest()
    want = right if algorithm == "md5" else right[:8]  # CIFAR's MD5; a weights file's SHA-256 prefix (torch.hub's)
    serve(monkeypatch, Response([data[:5], data[5:]], len(data)))
    downloads.download("http://x/f", tmp_path / "f", 100, digest=(algorithm, want), progress=False)
    assert (tmp_path / "f").read_bytes() == data
    serve(monkeypatch, Response([data[:5]], len(data)))  # cut short
    name = {"md5": "MD5", "sha256": "SHA-256"}[algorithm]
    shown = rf"\({name} [0-9a-f]{{16}}\.\.\., expected {want[:16]}\.\.\.\)"
    with pytest.raises(downloads.DownloadFailed, match=rf"^the file differs from the published one {shown}: cut short"):
        downloads.download("http://x/f", tmp_path / "f", 100, digest=(algorithm, want), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == data
