"""The inference fast path (inference/fastpath.py): the choice per machine, the compiled model
and its on-disk cache (inference/compile_cache.py).

Two real AOTInductor builds of a ResNet-8 (fp32 and bf16), shared by the module: about 20 s
each on 2 cores (`built`, marked in its docstring). Every other test that needs a package copies
one of those in place of compiling (`fake_compile`), so cache hits, rebuilds and fallbacks are
counted, not timed.
"""
import errno
import warnings

import pytest
import torch

from resnetlab.cpu import cpu_flags, cpu_vendor
from resnetlab.engine.runtime import Runtime, autocast, prepare_model
from resnetlab.errors import ResnetlabWarning, UserError
from resnetlab.inference import compile_cache
from resnetlab.inference.fastpath import FastModel, InferencePath, choose_path, embeddings, prepare_inference
from resnetlab.models import create_model
from resnetlab.models.fuse import fuse_bn
from resnetlab.bench.spec import AUTO, BenchSpec, auto_variant, parse_variant

AMX = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"})
AVX512 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})
ICELAKE = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})  # AVX-512 without BF16
CPU, SIZE = torch.device("cpu"), 16


@pytest.mark.parametrize("device, flags, precision, size, expected", [
    ("cpu", AMX, "auto", 32, InferencePath("bf16", True, True)),  # issue 18: 6.94x against 3.40x eager bf16
    ("cpu", AMX, "auto", 224, InferencePath("bf16", True, True)),
    ("cpu", AMX, "bf16", 32, InferencePath("bf16", True, True)),
    ("cpu", AMX, "fp32", 32, InferencePath("fp32", True, False)),  # exact fp32: never compiled
    ("cpu", AMX, "fp16", 32, InferencePath("fp16", True, False)),
    ("cpu", AVX512, "auto", 32, InferencePath("fp32", True, False)),  # eager 2.54x against compiled 1.77x
    ("cpu", AVX512, "auto", 224, InferencePath("fp32", True, True)),  # compiled 1.92x against 1.66x
    ("cpu", AVX512, "bf16", 32, InferencePath("bf16", True, False)),
    ("cpu", ICELAKE, "auto", 32, InferencePath("fp32", True, True)),  # compiled 1.73x against 1.33x eager
    ("cpu", ICELAKE, "auto", 224, InferencePath("fp32", True, True)),
    ("cpu", ICELAKE, "fp32", 32, InferencePath("fp32", True, False)),
    ("cpu", AVX2, "auto", 32, InferencePath("fp32", True, True)),  # EPYC: compiled 1.67x against 1.09x
    ("cpu", AVX2, "auto", 224, InferencePath("fp32", True, True)),
    ("cpu", AVX2, "fp32", 224, InferencePath("fp32", True, False)),
    ("cpu", frozenset(), "auto", 224, InferencePath("fp32", True, False)),  # unknown CPU: no guess
    ("cuda", AMX, "auto", 224, InferencePath("fp32", True, False)),
])
def test_choose_path_follows_the_measurements(device, flags, precision, size, expected):
    assert choose_path(device, flags, precision, size) == expected


@pytest.mark.parametrize("vendor, precision, size, expected", [
    # AMD's AVX-512 BF16 (Zen 4) runs bf16 at native speed: compiled bf16 2.95x (ResNet-20) against
    # 1.56x compiled fp32 (benchmarks/results/amd_epyc_avx512/); Intel's without AMX does not
    ("AuthenticAMD", "auto", 32, InferencePath("bf16", True, True)),
    ("AuthenticAMD", "auto", 224, InferencePath("bf16", True, True)),
    ("AuthenticAMD", "fp32", 32, InferencePath("fp32", True, False)),
    ("GenuineIntel", "auto", 32, InferencePath("fp32", True, False)),
    ("", "auto", 224, InferencePath("fp32", True, True)),
])
def test_choose_path_takes_bf16_where_the_vendor_makes_it_fast(vendor, precision, size, expected):
    assert choose_path("cpu", AVX512, precision, size, vendor=vendor) == expected
    assert choose_path("cpu", AVX2, "auto", size, vendor=vendor).precision == "fp32"  # no bf16 instructions


def test_choose_path_on_cuda_and_int8():
    assert choose_path("cuda", frozenset(), "auto", 224, cuda_bf16=True) == InferencePath("bf16", True, False)
    with pytest.raises(ValueError, match="int8"):
        choose_path("cpu", AMX, "int8")


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=4).eval()


def images(n: int = 24, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def fast(precision: str) -> tuple[FastModel, Runtime]:
    model, rt = tiny(), Runtime(CPU, precision, True)
    path = InferencePath(precision, True, True)
    return FastModel(prepare_model(fuse_bn(model), rt), "resnet8", path, SIZE, compile_cache.weights_digest(model)), rt


@torch.no_grad()
def outputs(net, rt: Runtime, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast(rt):
        return net(x).float(), embeddings(net, x).float()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """SLOW (~40 s on 2 cores): real AOTInductor packages for the fp32 and bf16 paths, in a cache
    of their own; {precision: (outputs of the compiled model, the package's bytes)}."""
    folder = tmp_path_factory.mktemp("cache")
    found = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_CACHE", str(folder))
        for precision in ("fp32", "bf16"):
            before = set((folder / "compiled").glob("*.pt2"))
            net, rt = fast(precision)
            process = process_state()
            got = outputs(net, rt, images())
            found[f"process state {precision}"] = (process, process_state())
            package, = set((folder / "compiled").glob("*.pt2")) - before
            found[precision] = (got, package.read_bytes())
    return folder, found


def process_state() -> tuple:
    """What torch's compiler changes in the process that compiles (the caller's, on predict's first call)."""
    import os
    import sys

    return sys.getrecursionlimit(), os.environ.get("TORCHINDUCTOR_CACHE_DIR"), list(warnings.filters)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path))
    return tmp_path / "compiled"


@pytest.fixture
def fake_compile(monkeypatch, built):
    """compile_package replaced by a copy of the real bf16 package; .calls counts the builds."""
    class Fake:
        calls = 0

        def __call__(self, module, example, out):
            Fake.calls += 1
            out.write_bytes(built[1]["bf16"][1])
    fake = Fake()
    monkeypatch.setattr(compile_cache, "compile_package", fake)
    return fake


def clear(logits: torch.Tensor, atol: float) -> torch.Tensor:
    """Images whose top-2 logits lie further apart than two rounding errors: their class cannot flip."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1] > 2 * atol


def test_compiled_fp32_equals_eager_and_bf16_agrees(built):
    for precision, tolerance in (("fp32", 1e-5), ("bf16", 0.03)):
        (logits, feats), _ = built[1][precision]
        model, rt = tiny(), Runtime(CPU, precision, True)
        eager_logits, eager_feats = outputs(prepare_model(fuse_bn(model), rt), rt, images())
        atol = tolerance * eager_logits.abs().max().item()
        assert torch.allclose(logits, eager_logits, atol=atol)
        assert torch.allclose(feats, eager_feats, atol=tolerance * eager_feats.abs().max().item())
        with torch.no_grad():
            plain = model(images())
        sure = torch.ones(len(plain), dtype=torch.bool) if precision == "fp32" else clear(plain, atol)
        assert sure.sum() >= 8  # enough images whose class is not a coin toss in bf16
        assert torch.equal(logits.argmax(1)[sure], eager_logits.argmax(1)[sure])
        assert torch.equal(logits.argmax(1)[sure], plain.argmax(1)[sure])


def test_compiling_leaves_the_callers_process_as_it_found_it(built):
    """The recursion limit went from 1000 to 2000, TORCHINDUCTOR_CACHE_DIR was set (and inherited by every
    subprocess), and a warnings filter for sympy was added by the first predict of a notebook."""
    for precision in ("fp32", "bf16"):
        before, after = built[1][f"process state {precision}"]
        assert after == before


def test_two_threads_first_predictions_at_once_build_one_package_and_both_run_it(cache, fake_compile):
    """A service's threads sharing one resnetlab.load: both built at once, torch.export failed in both
    (it is not thread-safe), and the model ran eagerly, 25x slower, for the rest of the process."""
    import threading

    second = threading.Event()
    build = fake_compile.__call__

    def slow_build(*args):  # waits for a second build, which only comes where nothing keeps threads apart
        if fake_compile.calls:
            second.set()
        else:
            second.wait(timeout=3)
        build(*args)
    fake_compile.__class__.__call__ = lambda self, *args: slow_build(*args)
    net, rt = fast("bf16")
    got, threads = {}, [threading.Thread(target=lambda i=i: got.update({i: outputs(net, rt, images())[0]}))
                        for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "failed; running it eagerly"
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert fake_compile.calls == 1 and net._package is not None
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], built_outputs(cache))


def test_a_model_already_compiled_does_not_wait_for_another_one_compiling(cache, fake_compile):
    """One lock for every model made a service's cached model B wait, at its first prediction, for model
    A's minutes of compiling; only compiles wait for each other (torch.export is not thread-safe)."""
    import threading

    b, rt = fast("fp32")
    outputs(b, rt, images())  # B's package built and cached
    b_again, _ = fast("fp32")  # a new load of B: its first use is a cache hit
    release, started = threading.Event(), threading.Event()
    build = fake_compile.__call__

    def blocked_build(*args):
        started.set()
        release.wait(timeout=60)
        build(*args)
    fake_compile.__class__.__call__ = lambda self, *args: blocked_build(*args)
    a, _ = fast("bf16")
    compiling = threading.Thread(target=lambda: outputs(a, rt, images()))
    done = threading.Thread(target=lambda: outputs(b_again, rt, images()))
    compiling.start()
    try:
        assert started.wait(timeout=60)
        done.start()
        done.join(timeout=30)
        assert not done.is_alive(), "a cache hit waited for another model's compile"
    finally:
        release.set()
        for thread in (compiling, done):  # nothing of this test runs on into the next
            if thread.is_alive():
                thread.join(timeout=60)
    assert b_again._package is b._package and a._package is not None and fake_compile.calls == 2


def built_outputs(cache) -> torch.Tensor:
    """The logits of the one package in `cache`, run directly."""
    package, = cache.glob("*.pt2")
    runner = compile_cache._load(package, compile_cache.sha256_of(package))
    with torch.no_grad():
        return runner(images().contiguous(memory_format=torch.channels_last))[0]


def test_a_model_on_the_compiled_path_copies_and_pickles_after_its_first_use(cache, fake_compile):
    """copy.deepcopy (a notebook) and pickle (joblib, multiprocessing) failed once the package was loaded:
    `cannot pickle 'torch._C._aoti.AOTIModelPackageLoader' object`."""
    import copy
    import pickle

    net, rt = fast("bf16")
    expected = outputs(net, rt, images())[0]
    for again in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert torch.equal(outputs(again, rt, images())[0], expected) and again._package is net._package
    assert fake_compile.calls == 1  # the copies loaded the package from the cache


def test_second_load_is_a_cache_hit(built, monkeypatch, capfd):
    monkeypatch.setenv("RESNETLAB_CACHE", str(built[0]))
    monkeypatch.setattr(compile_cache, "compile_package", lambda *a: pytest.fail("compiled again"))
    net, rt = fast("bf16")
    assert torch.equal(outputs(net, rt, images())[0], built[1]["bf16"][0][0])
    assert capfd.readouterr().err == ""  # nothing said on a cache hit
    assert (built[0] / "compiled").stat().st_mode & 0o777 == 0o700


def test_models_of_one_package_share_its_loaded_runner(built, monkeypatch):
    # torch's AOTI loader keeps the memory of a dropped loader: one load per package and process
    monkeypatch.setenv("RESNETLAB_CACHE", str(built[0]))
    monkeypatch.setattr(compile_cache, "compile_package", lambda *a: pytest.fail("compiled again"))
    (first, rt), (second, _) = fast("bf16"), fast("bf16")
    assert torch.equal(outputs(first, rt, images())[0], outputs(second, rt, images())[0])
    assert first._package is second._package


def test_a_package_file_rebuilt_with_other_bytes_is_loaded_again(built, tmp_path):
    package = tmp_path / "entry.pt2"
    runners = []
    for precision in ("bf16", "bf16", "fp32"):
        package.write_bytes(built[1][precision][1])
        runners.append(compile_cache._load(package, compile_cache.sha256_of(package)))
    assert runners[0] is runners[1] and runners[2] is not runners[0]
    with torch.no_grad():
        logits = runners[2](images().contiguous(memory_format=torch.channels_last))[0]
    assert torch.equal(logits, built[1]["fp32"][0][0])  # the new bytes' model, not the stale one


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign key", "bad json", "no json"])
def test_a_damaged_or_foreign_entry_is_rebuilt(cache, fake_compile, damage, capfd):
    net, rt = fast("bf16")
    expected = outputs(net, rt, images())[0]
    assert fake_compile.calls == 1
    package, = cache.glob("*.pt2")
    meta = package.with_suffix(".json")
    if damage == "flip":
        data = bytearray(package.read_bytes())
        data[len(data) // 2] ^= 0xFF
        package.write_bytes(bytes(data))
    elif damage == "truncate":
        package.write_bytes(package.read_bytes()[:1000])
    elif damage == "foreign key":
        meta.write_text(meta.read_text().replace('"resnet8"', '"resnet20"'))
    elif damage == "bad json":
        meta.write_text("{")
    else:
        meta.unlink()
    again, _ = fast("bf16")
    assert torch.equal(outputs(again, rt, images())[0], expected) and fake_compile.calls == 2
    assert outputs(fast("bf16")[0], rt, images())[0].shape == expected.shape and fake_compile.calls == 2  # intact again
    assert capfd.readouterr().err.count("compiling resnet8") == 2


def test_an_unwritable_cache_compiles_in_memory_with_one_line(tmp_path, monkeypatch, fake_compile, capfd):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "file"))
    net, rt = fast("bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = outputs(net, rt, images())[0]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not cached" in err[0] and "every run pays it" in err[0]
    assert logits.shape == (24, 4) and fake_compile.calls == 1


def test_a_full_disk_while_storing_warns_and_still_runs_the_build(cache, monkeypatch, fake_compile, capfd):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(compile_cache.shutil, "copyfileobj", full)
    net, rt = fast("bf16")
    with pytest.warns(ResnetlabWarning, match="could not keep the compiled model.*No space left.*compiles again") as said:
        logits = outputs(net, rt, images())[0]
    assert not [w for w in said if "eagerly" in str(w.message)]  # the package built runs; no fall-back to eager
    assert torch.isfinite(logits).all() and fake_compile.calls == 1
    assert [p for p in cache.iterdir() if p.suffix in (".pt2", ".json")] == []  # nothing half-written kept
    assert capfd.readouterr().err.count("compiling resnet8") == 1


def test_a_failed_build_warns_once_and_runs_eagerly(cache, monkeypatch):
    def broken(*args):
        raise RuntimeError("C++ compile error\nld: cannot find -lfoo")
    monkeypatch.setattr(compile_cache, "compile_package", broken)
    net, rt = fast("bf16")
    eager = outputs(net.eager, rt, images())
    with pytest.warns(ResnetlabWarning, match="cannot find -lfoo.*eagerly"):
        got = outputs(net, rt, images())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        again = outputs(net, rt, images())
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(got, eager, again))
    assert list(cache.glob("*.pt2")) == []


def test_another_input_size_runs_eagerly_without_compiling(cache, monkeypatch):
    monkeypatch.setattr(compile_cache, "compile_package", lambda *a: pytest.fail("compiled"))
    net, rt = fast("fp32")
    x = images(size=24)  # e.g. multi-scale testing
    assert torch.equal(outputs(net, rt, x)[0], outputs(net.eager, rt, x)[0])


@pytest.mark.parametrize("setting", ["no compiler", "RESNETLAB_COMPILE=0", "--no-fuse"])
def test_prepare_inference_stays_eager_when_it_must(monkeypatch, setting):
    monkeypatch.setattr("resnetlab.cpu.cpu_flags", lambda: AMX)
    monkeypatch.setenv("RESNETLAB_COMPILE", "0" if setting == "RESNETLAB_COMPILE=0" else "1")
    if setting == "no compiler":
        monkeypatch.setenv("CXX", "/nonexistent/g++")
        with pytest.warns(ResnetlabWarning, match="no C\\+\\+ compiler"):
            model, rt = prepare_inference(tiny(), "resnet8", "cpu", "auto", SIZE)
    else:
        model, rt = prepare_inference(tiny(), "resnet8", "cpu", "auto", SIZE, fuse=setting != "--no-fuse")
    assert not isinstance(model, FastModel) and (rt.precision, rt.channels_last) == ("bf16", True)


def test_precision_fp32_is_exact_fp32(monkeypatch):
    """--precision fp32 on an AMX CPU with compiling on: eager folded fp32, the plain model's answers."""
    monkeypatch.setattr("resnetlab.cpu.cpu_flags", lambda: AMX)
    monkeypatch.setenv("RESNETLAB_COMPILE", "1")
    model, rt = prepare_inference(tiny(), "resnet8", "cpu", "fp32", SIZE)
    assert not isinstance(model, FastModel) and rt.precision == "fp32"
    logits, _ = outputs(model, rt, images(64))
    with torch.no_grad():
        plain = tiny()(images(64))
    assert torch.equal(logits.argmax(1), plain.argmax(1)) and torch.allclose(logits, plain, atol=1e-5)


def test_bench_auto_is_the_path_predict_takes():
    assert parse_variant("auto") == AUTO
    spec = BenchSpec(model="resnet20", task="infer")
    path = choose_path("cpu", cpu_flags(), "auto", 32, vendor=cpu_vendor())
    v = auto_variant(spec)
    assert (v.pipeline, v.precision, v.channels_last, v.compile) == ("auto", path.precision, path.channels_last,
                                                                     "aoti" if path.compiled else "eager")
    with pytest.raises(UserError, match="--task infer"):
        auto_variant(BenchSpec(task="train"))


def test_a_loose_cache_folder_is_made_private(cache):
    cache.mkdir(parents=True, mode=0o755)
    cache.chmod(0o755)
    assert compile_cache.unusable(cache) is None and cache.stat().st_mode & 0o777 == 0o700
