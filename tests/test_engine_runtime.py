"""Where the math runs: the automatic choices per device and the errors for impossible ones."""
import pytest
import torch

from resnetlab.config import TrainConfig
from resnetlab.engine import runtime
from resnetlab.engine.runtime import compile_model, make_runtime, resolve_compile, resolve_precision
from resnetlab.errors import UserError

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


def test_make_runtime_resolves_every_field_on_the_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    rt = make_runtime(TrainConfig(device="cpu"))
    assert (rt.device, rt.precision, rt.channels_last, rt.compile) == (CPU, "fp32", True, "none")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)  # an AMX CPU
    assert make_runtime(TrainConfig(device="cpu", compile="true")).precision == "bf16"
    assert make_runtime(TrainConfig(device="cpu", compile="true")).compile == "default"


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
