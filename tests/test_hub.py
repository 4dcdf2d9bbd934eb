"""Fetching published weights through a local HTTP server on loopback used as the mirror: download,
hash check, cache hit with the server gone, wrong hashes and dropped connections leave nothing in
the cache, and the offline message names the URL and the exact path to place the file by hand.

The registry's digests are those of the real files, so these tests make entries of their own
(dataclasses.replace of a real one) for files they build, and register them where a name is needed."""
import functools
import hashlib
import http.server
import threading
from dataclasses import replace

import pytest
import torch
from reference_resnets import akamaster_file, assert_same_outputs
from safetensors.torch import save_file

from resnetlab import UserError, create_model
from resnetlab.cli import main
from resnetlab.models import hub, pretrained

HOST = "weights.example"  # never contacted: every test sends downloads to the loopback mirror


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; under /drop/ it promises the whole file and hangs up halfway."""

    def do_GET(self):
        if self.path.startswith("/drop/"):
            data = (self.server.root / self.path[len("/drop/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output quiet
        pass


class Server:
    def __init__(self, root):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.root = root
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    srv = Server(root)
    monkeypatch.setenv(hub.MIRROR_ENV, srv.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield srv
    srv.stop()


def publish(srv, build, name="resnet20.test_c10", digest=True, file_format="torch"):
    """Write a file built by `build(path)` onto the server; return (entry for it, build's result)."""
    base = pretrained.get_weights("resnet20.akamaster_c10")
    staging = srv.httpd.root / "staging"
    result = build(staging)
    sha = hashlib.sha256(staging.read_bytes()).hexdigest()
    suffix = ".safetensors" if file_format == "safetensors" else ".th"
    filename = f"resnet20-{sha[:8]}{suffix}" if digest else f"resnet20-test{suffix}"
    target = srv.httpd.root / HOST / "models" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    entry = replace(base, name=name, urls=(f"https://{HOST}/models/{filename}",), filename=filename,
                    hash_prefix=sha[:8] if digest else None, sha256=sha if digest else None, file_format=file_format)
    return entry, result


def cache_files():
    folder = hub.cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_check_then_cache_hit_without_the_server(server, monkeypatch):
    entry, reference = publish(server, akamaster_file)
    path = hub.fetch(entry, progress=False)
    assert path == hub.cache_dir() / entry.filename
    assert path.parent == server.httpd.root.parent / "torch" / "hub" / "checkpoints"  # $TORCH_HOME/hub/checkpoints
    assert path.read_bytes() == (server.httpd.root / HOST / "models" / entry.filename).read_bytes()
    assert cache_files() == [entry.filename]  # no staging or .partial file left behind
    server.stop()
    assert hub.fetch(entry, progress=False) == path  # from the cache, no network
    monkeypatch.setitem(pretrained._BY_NAME, entry.name, entry)  # by name, in akamaster's layout
    assert_same_outputs(create_model(entry.name, pretrained=True), reference, 32)
    assert_same_outputs(create_model("resnet20", weights="test_c10"), reference, 32)
    new_head = create_model("resnet20", weights="test_c10", num_classes=4)  # fine-tuning: the backbone, a new fc
    published = create_model(entry.name, pretrained=True)
    assert new_head.fc.out_features == 4
    assert torch.equal(new_head.layer3[2].conv2.weight, published.layer3[2].conv2.weight)


def test_a_file_torchvision_already_downloaded_is_used_as_it_is(server):
    entry, _ = publish(server, akamaster_file)
    hub.cache_dir().mkdir(parents=True)
    (hub.cache_dir() / entry.filename).write_bytes((server.httpd.root / HOST / "models" / entry.filename).read_bytes())
    server.stop()
    assert hub.fetch(entry, progress=False).name == entry.filename


def test_wrong_hash_is_refused_and_not_cached(server):
    entry, _ = publish(server, akamaster_file)
    wrong = replace(entry, hash_prefix="00000000", sha256=None)
    with pytest.raises(UserError, match="differs from the published one") as err:
        hub.fetch(wrong, progress=False)
    assert "Nothing was written to the cache" in str(err.value)
    assert cache_files() == []


@pytest.mark.parametrize("file_format", ["torch", "safetensors"])
def test_connection_dropped_mid_file_leaves_nothing(server, monkeypatch, file_format):
    if file_format == "torch":  # the digest catches the short file
        entry, _ = publish(server, akamaster_file)
    else:  # no published digest (like resnet50.a3_in1k): the format check catches it
        def build(path):
            save_file({"w": torch.randn(64, 64)}, str(path))
        entry, _ = publish(server, build, digest=False, file_format="safetensors")
    monkeypatch.setenv(hub.MIRROR_ENV, server.url + "/drop")
    with pytest.raises(UserError, match="could not download resnet20.test_c10"):
        hub.fetch(entry, progress=False)
    assert cache_files() == []


def test_offline_with_nothing_cached_says_where_to_put_the_file(server):
    entry, _ = publish(server, akamaster_file)
    server.stop()
    with pytest.raises(UserError) as err:
        hub.fetch(entry, progress=False)
    text = str(err.value)
    assert f"fetch {entry.urls[0]} elsewhere and put it at {hub.cache_dir() / entry.filename}" in text
    assert "\n" not in text and cache_files() == []


def test_missing_on_the_server_and_bad_cached_files(server, capsys, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    with pytest.raises(UserError, match="HTTP 404"):
        hub.fetch(replace(entry, urls=(f"https://{HOST}/models/nothing-here.th",)), progress=False)
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    (hub.cache_dir() / entry.filename).write_bytes(b"damaged")
    with pytest.raises(UserError, match=f"is not the published {entry.name} .*weights fetch {entry.name}"):
        hub.fetch(entry, progress=False)
    monkeypatch.setitem(pretrained._BY_NAME, entry.name, entry)
    assert main(["weights", "verify"]) == 1
    assert f"{entry.name}: FAILED:" in capsys.readouterr().out
    # offline, fetch says the damaged file is why it tried, and that it is left as it was
    with monkeypatch.context() as offline:
        offline.setenv(hub.MIRROR_ENV, str(server.httpd.root / "nothing-here"))
        assert main(["weights", "fetch", entry.name, "--quiet"]) == 2
    assert f". The damaged file there is as it was ({hub.cache_dir() / entry.filename} is not the published" in \
        capsys.readouterr().err
    assert (hub.cache_dir() / entry.filename).read_bytes() == b"damaged"
    # what the message advises works: fetch downloads the published file again in the damaged one's place
    assert main(["weights", "fetch", entry.name, "--quiet"]) == 0
    assert (hub.cache_dir() / entry.filename).read_bytes() == (server.httpd.root / HOST / "models" /
                                                                entry.filename).read_bytes()
    assert cache_files() == [entry.filename] and main(["weights", "verify"]) == 0


def test_cli_fetch_then_verify(server, capsys, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    monkeypatch.setitem(pretrained._BY_NAME, entry.name, entry)
    assert main(["weights", "fetch", entry.name, "--quiet"]) == 0
    assert f"{entry.name}: {hub.cache_dir() / entry.filename} (SHA-256 {entry.sha256[:16]}... checked)" in \
        capsys.readouterr().out
    assert main(["weights", "verify"]) == 0
    assert f"{entry.name}: ok" in capsys.readouterr().out
    assert main(["weights", "fetch", "resnet20.nope"]) == 2
    assert "resnetlab weights: error: unknown weights 'resnet20.nope'" in capsys.readouterr().err


def test_mirror_keeps_host_and_path():
    assert hub.mirrored("https://download.pytorch.org/models/resnet18-f37072fd.pth", "http://m.local/w/") == \
        "http://m.local/w/download.pytorch.org/models/resnet18-f37072fd.pth"


def test_a_plain_folder_as_mirror_is_read_as_its_file_url_and_leaves_nothing_behind(server, monkeypatch):
    entry, _ = publish(server, akamaster_file)
    monkeypatch.setenv(hub.MIRROR_ENV, str(server.httpd.root))  # a folder, not a URL
    assert hub.fetch(entry, progress=False).read_bytes() == (server.httpd.root / HOST / "models" / entry.filename).read_bytes()
    assert cache_files() == [entry.filename]
    monkeypatch.setenv(hub.MIRROR_ENV, str(server.httpd.root / "nothing-here"))
    with pytest.raises(UserError, match="could not download .*Nothing was written to the cache"):
        hub.fetch(replace(entry, filename="other.th"), progress=False)
    assert cache_files() == [entry.filename]  # no .partial file of torch.hub's


def test_weights_list_of_an_unknown_model_names_it_and_the_choices(capsys):
    assert main(["weights", "list", "--model", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab weights: error: unknown model 'nosuch'; choose one of: resnet18,") and err.count("\n") == 1
    assert main(["weights", "list", "--model", "resnet20"]) == 0 and "resnet20.akamaster_c10" in capsys.readouterr().out
