"""The decoded-image cache of small-image folders: where it lives (RESNETLAB_CACHE, then
XDG_CACHE_HOME), what a killed writer leaves (removed once idle; a live writer's file, here or in
another container, kept), and which caches a newer one replaces (its own folder, part and machine's)."""
import os
import subprocess
import sys
import time
from pathlib import Path

from test_data_folders import COLOURS, _cfg, _tree, _write

from resnetlab.config import DataConfig
from resnetlab.data import build_data


def test_a_cache_write_killed_midway_leaves_nothing_once_the_next_cache_is_written(tmp_path):
    """Its temporary file stayed in the cache folder for ever (150 MB for CIFAR-10)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "cache").mkdir()
    stale = tmp_path / "cache" / f".d-0123456789abcdef0123.npz.{dead}.tmp"
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 400, time.time() - 400))  # untouched for longer than any writer pauses
    live = tmp_path / "cache" / ".d-other.npz.1.tmp"  # pid 1 runs: a write in progress elsewhere
    live.write_bytes(b"")
    # a pid that runs nowhere here, written to a moment ago: a writer in another container sharing the cache
    elsewhere = tmp_path / "cache" / f".d-fedcba9876543210fedc.npz.{dead}.tmp"
    elsewhere.write_bytes(b"\0" * 1000)
    build_data(_cfg(_tree(tmp_path / "d"), tmp_path))
    assert not stale.exists() and live.exists() and elsewhere.exists()


def test_every_cache_follows_resnetlab_cache_then_xdg_cache_home(tmp_path, monkeypatch):
    """The decoded images went to ~/.cache/resnetlab whatever XDG_CACHE_HOME said (the compiled models
    and torch.hub's weights followed it): a home kept small filled with 150 MB per dataset."""
    from resnetlab.inference.compile_cache import cache_dir as compiled

    monkeypatch.delenv("RESNETLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    uncached = lambda root: DataConfig(dataset="folder", root=str(root), val_size=0)  # noqa: E731
    bundle = build_data(uncached(_tree(tmp_path / "d")))
    assert [Path(c).parent for c in bundle.provenance["caches"]] == [tmp_path / "xdg" / "resnetlab" / "folders"] * 2
    assert compiled() == tmp_path / "xdg" / "resnetlab" / "compiled"
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "mine"))
    assert compiled() == tmp_path / "mine" / "compiled"
    assert Path(build_data(uncached(tmp_path / "d")).provenance["caches"][0]).parent == tmp_path / "mine" / "folders"


def test_a_cache_replaced_by_a_newer_listing_is_removed_and_long_folder_names_fit(tmp_path):
    """Every edit, chmod -R (new ctimes) or cache version left another whole decoded copy for ever;
    a folder name of 231-255 bytes made the cache's own name too long (a warning, then exit 2)."""
    root = _tree(tmp_path / ("é" * 120))  # 240 bytes: a legal name
    build_data(_cfg(root, tmp_path))
    first = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(first) == 2 and all(len(os.fsencode(p.name)) < 120 for p in first)  # train and test
    other = _tree(tmp_path / "elsewhere" / ("é" * 120))  # another folder of the same name: its caches stay
    build_data(_cfg(other, tmp_path))
    _write(root / "train" / "cat" / "9.png", COLOURS["cat"])  # a new listing of train: a new cache
    bundle = build_data(_cfg(root, tmp_path))
    now = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(now) == 4 and len(set(first) & set(now)) == 1  # the old train cache went, the test one stays
    assert {Path(c) for c in bundle.provenance["caches"]} <= set(now)  # beside the other folder's two


def test_nodes_sharing_a_cache_folder_keep_each_others_caches(tmp_path, monkeypatch):
    """Each node's copy of the data at the same path has its own ctimes, so its own key: the nodes
    removed each other's caches in turn, and every job decoded everything again."""
    import socket

    root = _tree(tmp_path / "d")
    monkeypatch.setattr(socket, "gethostname", lambda: "node-a")
    build_data(_cfg(root, tmp_path))
    node_a = set((tmp_path / "cache").glob("*.npz"))
    for path in root.rglob("*.png"):
        os.chmod(path, 0o644)  # node b's copy: the same files, other ctimes
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    build_data(_cfg(root, tmp_path))
    assert len(node_a) == 2 and node_a < set((tmp_path / "cache").glob("*.npz")) and \
        len(list((tmp_path / "cache").glob("*.npz"))) == 4


def test_cifar_downloaded_before_xdg_cache_home_counted_is_found_where_it_is(tmp_path, monkeypatch):
    """With XDG_CACHE_HOME set, CIFAR is looked for under it now: one downloaded earlier to
    ~/.cache/resnetlab/datasets is used there, not downloaded again (or missing to a resume)."""
    from resnetlab.data.build import cifar_home

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("RESNETLAB_CACHE", raising=False)
    new, legacy = tmp_path / "xdg" / "resnetlab" / "datasets", tmp_path / "home" / ".cache" / "resnetlab" / "datasets"
    assert cifar_home("cifar10") == new  # nowhere yet: downloaded where the cache is
    (legacy / "cifar-10-batches-py").mkdir(parents=True)
    assert cifar_home("cifar10") == legacy and cifar_home("cifar100") == new
    (new / "cifar-10-batches-py").mkdir(parents=True)
    assert cifar_home("cifar10") == new


def test_without_a_home_folder_the_cache_says_how_to_name_one(tmp_path, monkeypatch, capsys):
    """A container run as a user the password database does not know, HOME unset: Path.home() raised
    RuntimeError, a traceback."""
    from pathlib import Path

    from resnetlab.cli import main

    def nowhere():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(nowhere))
    for name in ("RESNETLAB_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    assert main(["data", str(_tree(tmp_path / "d"))]) == 2
    assert capsys.readouterr().err == (
        f"resnetlab data: error: there is no home folder to keep resnetlab's caches in (HOME is unset and user "
        f"{os.getuid()} has none in the password database): set RESNETLAB_CACHE (or HOME) to a writable folder\n")
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    assert main(["data", str(tmp_path / "d")]) == 0


def test_small_images_are_decoded_by_one_process_per_usable_core(tmp_path, monkeypatch):
    """os.cpu_count() (the machine's) sized the pool: taskset -c 0 or a 2-core share of a big node got
    a process per core of the whole machine, taking turns on the cores granted."""
    import resnetlab.cpu
    from resnetlab.data import folder

    asked = []
    monkeypatch.setattr(folder, "PARALLEL_MIN", 1)
    monkeypatch.setattr(folder.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(resnetlab.cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(folder, "decode_pool", lambda procs: asked.append(procs) or folder.multiprocessing.Pool(1))
    build_data(_cfg(_tree(tmp_path / "d"), tmp_path))
    assert asked and set(asked) == {2}


def test_the_not_cached_warning_names_each_commands_own_option(tmp_path, capsys):
    """It said '(--cache-dir)' to train, which has no such flag (only `data` has)."""
    from resnetlab.cli import main

    root = _tree(tmp_path / "d")
    (tmp_path / "afile").write_text("")
    blocked = str(tmp_path / "afile" / "cache")
    assert main(["data", str(root), "--cache-dir", blocked]) == 0
    assert "the next run decodes them again; pass --cache-dir DIR (or RESNETLAB_CACHE) to name another folder" in \
        capsys.readouterr().err
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "resnet8", "--max-steps", "1",
                 "--set", f"data.cache_dir={blocked}", "--set", "data.val_size=0"]) == 0
    assert "pass --set data.cache_dir=DIR (or RESNETLAB_CACHE) to name another folder" in capsys.readouterr().err
