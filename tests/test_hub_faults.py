"""Published weights against servers and caches that misbehave: a server that stops sending, a
download killed where no cleanup ran, a cache that cannot be written, a file without a published
digest that is not the entry's weights, a redirect loop, and a model that differs from the weights'
only where shapes do not show. Every case is one line and leaves nothing under the cache name."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from reference_resnets import akamaster_file
from safetensors.torch import save_file
import test_hub
from test_hub import HOST, cache_files, publish

from resnetlab import UserError, create_model, downloads
from resnetlab.models import hub, pretrained

server = test_hub.server  # the loopback mirror fixture of test_hub.py


class Stalling:
    """A server on loopback that takes connections and then sends `head` and nothing more."""

    def __init__(self, head: bytes):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.head, self.conns = head, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.conns.append(conn)
            conn.sendall(self.head)

    def close(self):
        for conn in [*self.conns, self.sock]:
            conn.close()


@pytest.mark.parametrize("head", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000],
                         ids=["never-answers", "stops-mid-file"])
def test_a_server_that_stops_sending_times_out_and_leaves_nothing(server, monkeypatch, head):
    entry, _ = publish(server, akamaster_file)
    stalling = Stalling(head)
    monkeypatch.setenv(hub.MIRROR_ENV, stalling.url)
    monkeypatch.setattr(downloads, "STALL_TIMEOUT_S", 0.5)
    try:
        with pytest.raises(UserError, match=r"no data from the server for 0.5 s\). Nothing was written"):
            hub.fetch(entry, progress=False)
    finally:
        stalling.close()
    assert cache_files() == []


class Trickling(Stalling):
    """A server that sends a header, then a byte every 0.02 s until the client hangs up: each read gets
    data, the file never grows (the 128 kB the slow check wants would take 40 minutes)."""

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn):
        try:
            conn.sendall(self.head)
            while True:
                conn.sendall(b"x")
                time.sleep(0.02)
        except OSError:
            return


def ticking(monkeypatch, step: float):
    """downloads' clock moves `step` seconds each time the slow check reads it: the check ends a drip
    after a few reads, whatever the speed of the machine the tests run on (no wall-clock window)."""
    seconds = [0.0]

    def now():
        seconds[0] += step
        return seconds[0]

    monkeypatch.setattr(downloads, "now", now)


def test_a_server_that_trickles_a_byte_at_a_time_is_given_up(server, monkeypatch):
    """Every read got a byte within the 60 s stall limit: the fetch went on for weeks without a word."""
    entry, _ = publish(server, akamaster_file)
    trickling = Trickling(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    monkeypatch.setenv(hub.MIRROR_ENV, trickling.url)
    ticking(monkeypatch, downloads.SLOW_S / 4)  # past SLOW_S by the fifth read with a byte in it
    try:
        with pytest.raises(UserError, match=r"no 128 kB from the server in 120 s: too slow, or stalled a byte at a "
                                            r"time\)\. Nothing was written"):
            hub.fetch(entry, progress=False)
    finally:
        trickling.close()
    assert cache_files() == [] and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_a_download_killed_without_cleanup_is_swept_by_the_next_fetch(server):
    entry, _ = publish(server, akamaster_file)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    folder = hub.cache_dir()
    folder.mkdir(parents=True)
    stale = [f".{entry.filename}.{dead}.0badf00d.download", f".{entry.filename}.{dead}.0badf00d.download.5e1f.partial"]
    live = f".{entry.filename}.1.0badf00d.download"  # pid 1 runs: a download in progress elsewhere
    other = f".other.th.{dead}.0badf00d.download"  # another file's: not this fetch's business
    elsewhere = f".{entry.filename}.{dead}.fedcba98.download"  # written a moment ago: a download in another container
    for name in (*stale, live, other, elsewhere):
        (folder / name).write_bytes(b"half")
    for name in stale:
        os.utime(folder / name, (time.time() - 3 * downloads.STALL_TIMEOUT_S,) * 2)  # no download pauses this long
    hub.fetch(entry, progress=False)
    assert cache_files() == sorted([entry.filename, live, other, elsewhere])


def test_a_cache_that_cannot_be_written_is_one_line_before_any_download(server, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    hub.cache_dir().parent.mkdir(parents=True)
    hub.cache_dir().write_text("")  # $TORCH_HOME/hub/checkpoints is a file: nothing can go under it
    server.stop()  # a download attempt would fail differently
    with pytest.raises(UserError) as err:
        hub.fetch(entry, progress=False)
    assert str(err.value) == (f"cannot write the weights cache {hub.cache_dir()} (Not a directory); "
                              "set TORCH_HOME to a writable folder")


def test_a_cleanup_that_fails_does_not_hide_why_the_download_failed(server, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    monkeypatch.setenv(hub.MIRROR_ENV, server.url + "/drop")  # cut short: the digest check fails
    unlink = type(hub.cache_dir()).unlink

    def read_only(path, missing_ok=False):  # the cache turned read-only after the download began
        if ".download" in path.name:
            raise OSError(30, "Read-only file system")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(type(hub.cache_dir()), "unlink", read_only)
    with pytest.raises(UserError, match="could not download .*differs from the published one"):
        hub.fetch(entry, progress=False)


def test_weights_without_a_digest_must_be_the_entrys_model(server, monkeypatch, capsys):
    from resnetlab.cli import main

    entry, _ = publish(server, lambda path: save_file({"foo": torch.zeros(3)}, str(path)), digest=False,
                       file_format="safetensors")
    with pytest.raises(UserError, match=r"not usable weights \(the downloaded file is not the weights of resnet20.test_c10 \(resnet20\): 98 tensors "
                                         r"missing, unexpected or of another shape \(first: bn1.bias\)\)"):
        hub.fetch(entry, progress=False)
    assert cache_files() == []
    (hub.cache_dir() / entry.filename).write_bytes((server.httpd.root / HOST / "models" / entry.filename).read_bytes())
    monkeypatch.setitem(pretrained._BY_NAME, entry.name, entry)
    assert main(["weights", "verify"]) == 1  # a hand-placed file of other weights is reported
    assert f"{entry.name}: FAILED:" in capsys.readouterr().out
    good, reference = publish(server, akamaster_file, digest=False)  # now the real weights, still no digest
    assert good.filename == entry.filename.replace(".safetensors", ".th")
    monkeypatch.setitem(pretrained._BY_NAME, good.name, good)
    assert main(["weights", "fetch", good.name, "--quiet"]) == 0 and main(["weights", "verify"]) == 0


@pytest.mark.parametrize("file_format", ["torch", "safetensors"])
def test_an_unreadable_download_without_a_digest_is_named_as_the_download_not_a_deleted_temporary(server, file_format):
    """A login page served in place of the weights: the message named the staging file it had just deleted."""
    entry, _ = publish(server, lambda path: path.write_text("<html>sign in</html>"), digest=False, file_format=file_format)
    with pytest.raises(UserError) as err:
        hub.fetch(entry, progress=False)
    assert "not usable weights (resnet20.test_c10: the downloaded file " in str(err.value)
    assert ".download" not in str(err.value) and str(hub.cache_dir()) in str(err.value)  # the cache path, as advice
    assert cache_files() == []


def test_a_model_that_differs_only_in_where_the_stride_is_is_refused_before_any_download(monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, "http://127.0.0.1:9")  # never reached
    entry = pretrained.get_weights("resnet50.a3_in1k")
    with pytest.raises(UserError, match=r"weights resnet50.a3_in1k are for resnet50.*differs in 6 places \(first: "
                                        r"layer2.0.conv1\)"):
        create_model("resnet50", weights="a3_in1k", stride_on="1x1")
    with torch.device("meta"):
        hub.check_fits(create_model("resnet50"), entry)  # the same architecture passes


def test_a_redirect_loop_is_one_line_and_the_mirror_in_use_is_named(server, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    loop = Stalling(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")
    monkeypatch.setenv(hub.MIRROR_ENV, loop.url)
    try:
        with pytest.raises(UserError) as err:
            hub.fetch(entry, progress=False)
    finally:
        loop.close()
    text = str(err.value)
    assert "\n" not in text and "HTTP 302" in text and f"(the mirror {hub.MIRROR_ENV}={loop.url} is in use)" in text


def test_a_leftover_download_that_cannot_be_removed_is_left_and_the_fetch_goes_on(server, monkeypatch):
    """Another user's leftover in a shared, sticky cache cannot be deleted: every fetch ended in PermissionError."""
    import pathlib

    entry, _ = publish(server, akamaster_file)
    folder = hub.cache_dir()
    folder.mkdir(parents=True)
    theirs = folder / f".{entry.filename}.999999999.0badf00d.download"
    theirs.write_bytes(b"half")
    os.utime(theirs, (time.time() - 3 * downloads.STALL_TIMEOUT_S,) * 2)
    unlink = pathlib.Path.unlink

    def refuse(self, *args, **kwargs):
        if self == theirs:
            raise PermissionError(1, "Operation not permitted", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    hub.fetch(entry, progress=False)
    assert cache_files() == sorted([entry.filename, theirs.name])
