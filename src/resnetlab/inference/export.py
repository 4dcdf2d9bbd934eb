"""Export a checkpoint for other runtimes, and prove the export computes what PyTorch computes.

ONNX and TorchScript files hold the whole inference function, normaliser included:

    input  "images": float32 (B, 3, S, S), RGB, values 0..255 (uint8 pixels cast to float, not
           scaled), already resized and centre-cropped as for evaluation (S = the checkpoint's
           input size; `resnetlab predict` does exactly this preprocessing)
    output "logits": float32 (B, num_classes); softmax gives the probabilities

BatchNorm is folded into the convolutions (models/fuse.py) before export. B is 1 unless
--dynamic-batch (ONNX); a traced TorchScript module accepts any batch size. safetensors holds
the (unfolded) weights, loadable with resnetlab.load_weights.

Every file carries the checkpoint's metadata (export_meta.metadata(): model name, classes, input
size, predict's exact preprocessing, normaliser), so a deployment needs nothing else: in ONNX as the model's
metadata_props, one entry per key, each value JSON (`onnx.load(f).metadata_props`, or
onnxruntime's `get_modelmeta().custom_metadata_map`), with a plain-text summary as doc_string;
in TorchScript as the extra file "resnetlab.json"; in safetensors as JSON under "resnetlab" (with
the tensors' SHA-256 under "resnetlab_sha256", checked whenever the file is read).
The export check reads it back from the written file.
"""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from resnetlab.errors import UserError, expect_path, option
from resnetlab.files import (atomic_path, atomic_write, check_writable, keep_mode, remove_abandoned, temporary,
                             write_target)
from resnetlab.guest import guest_call

from .export_meta import describe, metadata
from .out_guard import refuse_foreign

if TYPE_CHECKING:
    from resnetlab.engine.records import Artifact

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
EXPORT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript", "safetensors": "a safetensors"}
RTOL = 1e-3  # allowed max |diff| relative to the largest |logit| (fp32 rounding of a folded graph)


class ExportCheckFailed(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


class ImagesToLogits(nn.Module):
    """float 0..255 (B, 3, S, S) -> logits, with the normaliser baked in as one multiply-add.

    Every normaliser kind is affine per element, (x/255 - mean) / std, so it is stored as
    scale = 1 / (255 std) and shift = -mean / std at the export size (taken from the
    checkpoint's own Normalizer, so pixel-mean images resized to S are handled too).
    """

    def __init__(self, model: nn.Module, normalizer: nn.Module, size: int):
        super().__init__()
        zeros = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            shift = normalizer(zeros.to(torch.uint8))
            scale = (normalizer(torch.full_like(zeros, 255).to(torch.uint8)) - shift) / 255
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("shift", shift.contiguous())
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images * self.scale + self.shift)


def export_module(checkpoint, fuse: bool = True) -> tuple[ImagesToLogits, Artifact]:
    """(ImagesToLogits in eval mode on CPU, the Artifact) for a checkpoint, run directory,
    published weights' name or an Artifact."""
    from resnetlab.engine.checkpoint import model_from_checkpoint
    from resnetlab.engine.sources import load_source
    from resnetlab.models.fuse import fuse_bn

    artifact = load_source(checkpoint)[0]
    model, normalizer, _, _ = model_from_checkpoint(artifact)
    return ImagesToLogits(fuse_bn(model) if fuse else model, normalizer, artifact.input_size).eval(), artifact


def write(module: ImagesToLogits, artifact: Artifact, fmt: str, out: Path, dynamic_batch: bool) -> None:
    """Write the export atomically (resnetlab.files): a failure leaves nothing at `out`."""
    size = artifact.input_size
    example = torch.rand(2 if dynamic_batch else 1, 3, size, size, dtype=torch.float32) * 255
    if fmt == "safetensors":
        from resnetlab.engine.checkpoint import model_from_checkpoint
        from resnetlab.models import save_safetensors

        save_safetensors(model_from_checkpoint(artifact)[0], out, {"resnetlab": json.dumps(metadata(artifact))})
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still supported in torch 2.13, just discouraged
            traced = torch.jit.trace(module, example)
            serialized = io.BytesIO()  # torch's C++ writer aborts the process on a full disk; Python's writes say so
            torch.jit.save(traced, serialized, _extra_files={TORCHSCRIPT_META: json.dumps(metadata(artifact))})
        with atomic_write(out) as f:
            f.write(serialized.getvalue())
    else:
        _write_onnx(module, example, out, dynamic_batch, metadata(artifact))


TORCHSCRIPT_META = "resnetlab.json"
CHUNK = 64  # images run at once by the export check


def _write_onnx(module: nn.Module, example: torch.Tensor, out: Path, dynamic_batch: bool, meta: dict) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'resnetlab[export]'") from None
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    onnx_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes: irrelevant here
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes=shapes, verbose=False)
    except Exception as err:  # torch's exporter wraps a Ctrl-C or SIGTERM in its own error: give it back
        interrupt = _interruption_in(err)
        if interrupt is None:
            raise
        raise interrupt from None
    finally:
        onnx_log.setLevel(level)
    program.model.metadata_props.update({key: json.dumps(value) for key, value in meta.items()})
    program.model.doc_string = describe(meta)
    with atomic_path(out) as tmp:
        program.save(str(tmp))


def _interruption_in(err: BaseException) -> BaseException | None:
    """The KeyboardInterrupt (or Terminated) in an exception's chain of causes, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def check_out(fmt: str, out) -> Path:
    """The output path, or a UserError now (before any work) for a wrong format or suffix, or a
    place that cannot be written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = expect_path(out, "out")
    if out.suffix != SUFFIXES[fmt]:
        raise UserError(f"{option('--out', 'out')} {out}: {EXPORT_NAMES[fmt]} export should end in {SUFFIXES[fmt]}")
    check_writable(out)
    return out


@guest_call  # the example batch above is drawn from torch's generator: the caller's is left as found
def export_checkpoint(checkpoint, fmt: str, out, dynamic_batch: bool = False, real: torch.Tensor | None = None) -> dict:
    """Write the export, run it, compare with PyTorch; returns {"out", "format", "max_abs_diff": {...}}.
    The file is written and checked under a temporary name, then renamed to `out`: an error or an
    interruption leaves whatever was at `out` as it was; so does a failed check (ExportCheckFailed), whose
    file is left beside it as NAME.failed.SUFFIX (`failed_path`), to be inspected."""
    from .export_check import check_inputs, check_runtime, verify, verify_metadata, verify_safetensors

    out = check_out(fmt, out)
    refuse_foreign(out, fmt, f"{EXPORT_NAMES[fmt]} export")
    check_runtime(fmt)  # before any work: the check is part of the export
    module, artifact = export_module(checkpoint)
    target = write_target(out)  # a symbolic link is written through, not replaced by a file
    staged = temporary(target)
    remove_abandoned(target)  # what an export killed midway (kill -9) left, as big as the model
    try:
        write(module, artifact, fmt, staged, dynamic_batch)
        if fmt == "safetensors":
            diffs = verify_safetensors(staged, artifact)
        else:
            fixed = fmt == "onnx" and not dynamic_batch
            diffs = verify(fmt, staged, artifact, check_inputs(artifact, not fixed, real), batch_one=fixed)  # traced: any batch
        meta = verify_metadata(fmt, staged, artifact)
    except ExportCheckFailed as err:  # kept beside --out to inspect; whatever was at --out stays as it was
        failed = failed_path(target)
        os.replace(staged, failed)
        kept = f"the previous {out.name} is intact" if target.exists() else f"nothing was written at {out}"
        raise ExportCheckFailed(f"{str(err).replace(str(staged), str(failed))}; the failed export is left at "
                                f"{failed} to inspect, not to use; {kept}") from None
    except BaseException as err:  # an error or an interruption: nothing of it stays
        staged.unlink(missing_ok=True)
        if isinstance(err, UserError) and str(staged) in str(err):  # a full disk: said of --out, not the staging name
            kept = f"the previous {out.name} is intact" if out.exists() else "nothing was written there"
            raise type(err)(str(err).replace(str(staged), str(out)).replace("nothing was written there", kept)) from None
        raise
    keep_mode(target, staged)  # a chmod 600 model stays 600
    os.replace(staged, target)
    return {"out": str(out), "format": fmt, "dynamic_batch": dynamic_batch or fmt == "torchscript",
            "input_size": artifact.input_size, "max_abs_diff": diffs, "metadata": meta}


def failed_path(out: Path) -> Path:
    """Where an export that failed its check is left: model.onnx -> model.failed.onnx."""
    return out.with_name(f"{out.stem}.failed{out.suffix}")
