"""Checking an export (inference/export.py): run the written file (onnxruntime, torch.jit, or
load_weights for safetensors), compare it with the checkpoint's plain fp32 model, and read its
metadata back. A failure is ExportCheckFailed (exit 1, the file kept beside --out to inspect); onnxruntime that
is missing or does not load is a UserError before any work."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resnetlab.errors import UserError, count, first_line

from .export import CHUNK, RTOL, TORCHSCRIPT_META, ExportCheckFailed, export_module
from .export_meta import metadata

if TYPE_CHECKING:
    from resnetlab.engine.records import Artifact


def read_metadata(fmt: str, path: Path) -> dict:
    """The metadata stored in an exported file (see the module doc); {} when it has none."""
    if fmt == "onnx":
        import onnxruntime as ort

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        return {key: json.loads(value) for key, value in props.items()}
    if fmt == "torchscript":
        extra = {TORCHSCRIPT_META: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=extra)
        return json.loads(extra[TORCHSCRIPT_META]) if extra[TORCHSCRIPT_META] else {}
    from resnetlab.models.weights import safetensors_metadata

    return json.loads(safetensors_metadata(path).get("resnetlab", "{}"))


def verify_metadata(fmt: str, path: Path, artifact: Artifact) -> dict:
    """Read the metadata back from the written file; ExportCheckFailed unless it is the checkpoint's."""
    want, got = metadata(artifact), read_metadata(fmt, path)
    wrong = sorted(k for k in want if got.get(k) != json.loads(json.dumps(want[k])))
    if wrong:
        raise ExportCheckFailed(f"{path}: metadata {', '.join(wrong)} missing or different from the checkpoint's")
    return got


def check_runtime(fmt: str) -> None:
    """onnxruntime, which checks an ONNX export, loads: missing, or broken (a missing shared library,
    a build for another CPU), said in one line before any work."""
    if fmt != "onnx":
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install 'resnetlab[export]'") from None
    except Exception as err:
        raise UserError(f"onnxruntime could not be loaded ({type(err).__name__}: {first_line(err)}); reinstall it: "
                        "pip install --force-reinstall onnxruntime") from None


def load_runner(fmt: str, path: Path):
    """A function float32 numpy/tensor images -> logits tensor, running the exported file."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path)).eval()
        return lambda x: loaded(x).detach()
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
    except Exception as err:  # onnxruntime refuses the file, or fails
        raise ExportCheckFailed(f"onnxruntime could not run {path} ({first_line(err)})") from None

    def run(x):
        try:
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        except Exception as err:
            raise ExportCheckFailed(f"onnxruntime could not run {path} ({first_line(err)})") from None
    return run


def check_inputs(artifact: Artifact, dynamic_batch: bool, real: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Named float 0..255 input batches: random (batch 1, and 5 when dynamic) and real images."""
    size = artifact.input_size
    gen = torch.Generator().manual_seed(0)
    inputs = {"random batch 1": torch.randint(0, 256, (1, 3, size, size), generator=gen).float()}
    if dynamic_batch:
        inputs["random batch 5"] = torch.randint(0, 256, (5, 3, size, size), generator=gen).float()
    if real is not None and len(real):
        inputs[f"{count(len(real), 'real image')}"] = real  # uint8: made float chunk by chunk
    return inputs


@torch.no_grad()
def verify(fmt: str, path: Path, checkpoint, inputs: dict[str, torch.Tensor], batch_one: bool = False) -> dict[str, float]:
    """Max |exported - PyTorch| per input batch; the reference is the plain (unfolded) fp32 model.
    batch_one: the export takes batch 1 only, so batches are fed one image at a time.

    Raises ExportCheckFailed when a difference exceeds RTOL x the largest |logit|."""
    reference, _ = export_module(checkpoint, fuse=False)
    runner = load_runner(fmt, path)
    run = (lambda x: torch.cat([runner(x[i:i + 1]) for i in range(len(x))])) if batch_one else runner
    diffs = {}
    for name, images in inputs.items():  # in chunks: a folder of real images need not fit in memory as floats
        pairs = [(reference(x), run(x)) for x in (c.float() for c in images.split(CHUNK))]
        want, got = torch.cat([w for w, _ in pairs]), torch.cat([g for _, g in pairs])
        if got.shape != want.shape:
            raise ExportCheckFailed(f"{path}: output shape {tuple(got.shape)} on {name}, expected {tuple(want.shape)}")
        diffs[name] = (got - want).abs().max().item()
        if not diffs[name] <= RTOL * max(1.0, want.abs().max().item()):
            raise ExportCheckFailed(f"{path}: outputs differ from PyTorch by {diffs[name]:.3g} on {name}")
    return diffs


def verify_safetensors(path: Path, checkpoint) -> dict[str, float]:
    """Reload the file with load_weights into a fresh model: every tensor must be identical."""
    from resnetlab.engine.sources import load_source
    from resnetlab.models import create_model, load_weights

    artifact = load_source(checkpoint)[0]
    model = create_model(artifact.model_name, num_classes=artifact.num_classes, **artifact.model_kwargs)
    load_weights(model, str(path))
    worst = max((model.state_dict()[k].double() - v.double()).abs().max().item() for k, v in artifact.weights.items())
    if worst != 0:
        raise ExportCheckFailed(f"{path}: reloaded weights differ from the checkpoint by {worst:.3g}")
    return {"weights reloaded with load_weights": worst}
