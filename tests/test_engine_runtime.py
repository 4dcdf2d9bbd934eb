"""Where the math runs: the automatic choices per device and the errors for impossible ones."""
import warnings

import pytest
import torch

from resnetlab.config import TrainConfig
from resnetlab.engine import runtime
from resnetlab.engine.runtime import compile_model, make_runtime, resolve_compile, resolve_precision
from resnetlab.errors import ResnetlabWarning, UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_compile_auto_is_off_on_every_device():
    # measured: compiling never paid for itself on a CIFAR run, on the CPU or an H100
    assert resolve_compile("auto", CPU) == "none" and resolve_compile("auto", CUDA) == "none"
    # YAML's true/false (old configs saved compile as a bool) map onto the modes.
    assert resolve_compile("true", CPU) == "default" and resolve_compile("false", CUDA) == "none"
    assert resolve_compile("max-autotune-no-cudagraphs", CPU) == "max-autotune-no-cudagraphs"
    assert resolve_compile("reduce-overhead", CUDA) == "reduce-overhead"


@pytest.mark.parametrize("name, device, message", [
    ("fast", CPU, "train.compile 'fast'.*auto, true, false.*reduce-overhead"),
    ("reduce-overhead", CPU, "CUDA graphs.*needs a GPU"),
])
def test_bad_compile_choices_are_user_errors(name, device, message):
    with pytest.raises(UserError, match=message):
        resolve_compile(name, device)


AVX2 = frozenset({"avx2", "fma"})  # e.g. AMD EPYC (Zen 3): no bf16 or fp16 arithmetic
XEON = AVX2 | {"avx512f", "avx512_bf16", "avx512_vnni"}  # bf16 dot products, no AMX
AMX = XEON | {"amx_bf16", "amx_fp16", "amx_int8", "avx512_fp16"}


def test_make_runtime_resolves_every_field_on_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: XEON)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    rt = make_runtime(TrainConfig(device="cpu"))
    assert (rt.device, rt.precision, rt.channels_last, rt.compile) == (CPU, "fp32", True, "none")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AMX)
    assert make_runtime(TrainConfig(device="cpu", compile="true")).precision == "bf16"
    assert make_runtime(TrainConfig(device="cpu", compile="true")).compile == "default"


ZEN4 = XEON | {"avx512_vbmi2", "avx512_bitalg"}  # AMD EPYC (Zen 4): AVX-512 BF16, no AMX


@pytest.mark.parametrize("flags, vendor, precision", [
    # bf16 where it outruns fp32 (measured: benchmarks/results/amx_xeon/, amd_epyc_avx512/), fp32
    # where it does not: the Intel Xeon without AMX ran bf16 at 0.7-0.8x of fp32, AVX2 emulates it
    (AMX, "GenuineIntel", "bf16"), (ZEN4, "AuthenticAMD", "bf16"), (XEON, "GenuineIntel", "fp32"),
    (AVX2, "AuthenticAMD", "fp32"), (ZEN4, "", "fp32"), (frozenset(), "AuthenticAMD", "fp32"),
])
def test_automatic_precision_follows_the_cpus_fast_arithmetic(monkeypatch, flags, vendor, precision):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: vendor)
    assert make_runtime(TrainConfig(device="cpu")).precision == precision
    assert make_runtime(TrainConfig(device="cpu", precision="fp32")).precision == "fp32"


@pytest.mark.parametrize("flags, vendor, precision, auto", [
    (AVX2, "AuthenticAMD", "bf16", "fp32"), (AVX2, "AuthenticAMD", "fp16", "fp32"), (AVX2, "AuthenticAMD", "fp32", None),
    (AVX2, "AuthenticAMD", "auto", None), (XEON, "GenuineIntel", "bf16", None), (XEON, "GenuineIntel", "fp16", "fp32"),
    (ZEN4, "AuthenticAMD", "fp16", "bf16"), (AMX, "GenuineIntel", "fp16", None), (frozenset(), "", "bf16", None),
])
def test_an_emulated_half_precision_on_the_cpu_is_warned_about(monkeypatch, recwarn, flags, vendor, precision, auto):
    # measured on an AVX2-only EPYC: bf16 ResNet-20 training at 0.08x of fp32 -- a user who asks for
    # it there must hear why the run crawls; where the CPU is unknown, say nothing rather than guess.
    # The advice names what auto is on this CPU: bf16 on a Zen 4, which emulates fp16 but not bf16.
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: vendor)
    rt = make_runtime(TrainConfig(device="cpu", precision=precision))
    ours = [str(w.message) for w in recwarn if issubclass(w.category, ResnetlabWarning)]
    assert len(ours) == (auto is not None)
    if auto:
        assert f"no {rt.precision} instructions" in ours[0] and ours[0].endswith(f"; use precision auto ({auto} on this CPU)")


def test_the_cli_prints_our_warnings_as_one_line(monkeypatch, capsys):
    from resnetlab import cli

    def run(args):
        warnings.warn("bf16 is emulated here", ResnetlabWarning)
        return 0

    monkeypatch.setattr(cli.models, "run", run)
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().err == "resnetlab models: warning: bf16 is emulated here\n"


def test_cpu_flags_are_read_from_proc_cpuinfo():
    from resnetlab.cpu import cpu_flags, cpu_vendor

    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    first = next(line for line in text.splitlines() if line.startswith("flags"))
    assert flags == frozenset(first.partition(":")[2].split())
    vendor = next((line for line in text.splitlines() if line.startswith("vendor_id")), ":")
    assert cpu_vendor() == vendor.partition(":")[2].strip()


def test_precision_and_device_errors():
    with pytest.raises(UserError, match="train.precision 'fp8'"):
        resolve_precision("fp8", CPU)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            make_runtime(TrainConfig(device="cuda"))


def test_compile_model_wraps_only_when_asked():
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "none") is model
    assert compile_model(model, "default") is not model  # an OptimizedModule; compiles lazily
    with pytest.raises(UserError, match="compile mode 'fast'"):
        compile_model(model, "fast")
