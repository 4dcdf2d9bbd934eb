"""What an export says about itself: the checkpoint's metadata and the exact preprocessing of
`resnetlab predict` and `eval`, machine-readable (`metadata()`) and as one paragraph (`describe()`).

A deployer who follows `preprocessing` with Pillow and numpy alone gets predict's pixels
(tests/test_export_preprocessing.py does exactly that). Per image, in this order:

1. EXIF orientation applied (PIL ImageOps.exif_transpose), then RGB.
2. An image whose larger side L is at most `small_images.max_side` (64) px is read whole at its own
   size, as a folder of small images is: shorter side resized up to L, centre L x L crop, then that
   square resized to the input size S (bilinear, antialiased, in float, rounded) unless L == S.
3. Any other image: shorter side resized to `resize`, centre `crop` x `crop`.

"Shorter side resized to R, centre crop C" is torchvision's Resize(R) + CenterCrop(C) to the pixel:
the longer side becomes floor(R * longer / shorter), the window's offset is round((resized - C) / 2)
(halves to even), and Pillow resamples the window straight from the original image (resize with a box).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from resnetlab.engine.records import Artifact

WINDOW = ("shorter side resized to R: longer side floor(R * longer / shorter); centre C x C window at offset "
          "round((resized - C) / 2) (halves to even) on each axis; Pillow: img.resize((C, C), filter, box=the window "
          "in the original image's pixels, i.e. each resized coordinate times original / resized)")
SMALL_RESIZE = ("bilinear, antialiased, in float32 then rounded (halves to even) and clipped to 0..255: "
                "torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False); "
                "Pillow: each channel as mode 'F', resize BILINEAR, then numpy.round (its double precision may "
                "round an exact half 1/255 apart)")


def preprocessing(artifact: Artifact) -> dict:
    """What to do to a photo before the exported graph, exactly as `resnetlab predict` does it (module
    docstring); the normalisation itself is inside the graph."""
    from resnetlab.data.folder import SMALL_SIDE
    from resnetlab.models import model_info

    from .predictor import whole_view

    data, size = artifact.data_config(), artifact.input_size
    small = whole_view(data.get("dataset"), data.get("augment"), model_info(artifact.model_name).family)
    resize = artifact.eval_resize if not small and data.get("augment") in ("imagenet", "rrc") else size
    interpolation = f"{data.get('interpolation') or 'bilinear'}, antialiased"  # the filter predict and eval use
    return {"exif_orientation": "applied first (PIL ImageOps.exif_transpose)", "color": "RGB",
            "resize": resize, "resize_side": "shorter", "interpolation": interpolation,
            "crop": size, "crop_kind": "center", "window": WINDOW,
            "small_images": {"max_side": SMALL_SIDE, "when": f"the larger side L <= {SMALL_SIDE} px (instead of the "
                             "resize and crop above)", "resize": "L", "crop": "L", "interpolation": interpolation,
                             "then_resize_to": size, "then_interpolation": SMALL_RESIZE,
                             "then_skip_if": f"L == {size}"},
            "jpeg": "decoded at a reduced DCT scale (PIL Image.draft) when the crop is at most half the image's "
                    "scale: up to a few 1/255 from a full decode",
            "layout": "NCHW", "dtype": "float32", "value_range": [0, 255],
            "normalization": "inside the graph (see normalizer)"}


def metadata(artifact: Artifact) -> dict:
    norm, a, pre = artifact.normalizer, artifact, preprocessing(artifact)
    # eval_resize is the resize predict applies (32 for a CIFAR net), not the config's unused default
    return {"model_name": a.model_name, "model_kwargs": a.model_kwargs, "num_classes": a.num_classes,
            "classes": list(a.classes), "input_size": a.input_size, "eval_resize": pre["resize"],
            "preprocessing": pre,
            "normalizer": {"kind": norm["kind"], "mean": flat(norm["mean"]), "std": flat(norm["std"])},
            "input": "float32 (B, 3, S, S) RGB 0..255, normaliser baked in", "output": "logits"}


def flat(values) -> list:
    """Per-channel statistics as a flat list of 3; a pixel-mean image keeps its (3, h, w) nesting."""
    values = torch.as_tensor(values)
    return values.flatten().tolist() if values.numel() == 3 else values.tolist()


def steps(pre: dict) -> str:
    """The preprocessing in words (the doc_string's, the export command's summary)."""
    small, size = pre["small_images"], pre["crop"]
    return (f"EXIF orientation applied, RGB; shorter side resized to {pre['resize']} ({pre['interpolation']}), "
            f"centre crop {size}x{size}; an image whose larger side L is <= {small['max_side']} px instead: shorter "
            f"side resized to L, centre crop LxL, then resized to {size}x{size} (bilinear, antialiased, in float, "
            "rounded)")


def describe(meta: dict) -> str:
    """One paragraph for people: the ONNX doc_string."""
    size = meta["input_size"]
    return (f"resnetlab {meta['model_name']}, {meta['num_classes']} classes. Input 'images': float32 (B, 3, {size}, "
            f"{size}), RGB pixel values 0..255: {steps(meta['preprocessing'])} (exact rules in metadata "
            f"'preprocessing'); normalisation ({meta['normalizer']['kind']}) is inside the graph. Output "
            "'logits' (B, num_classes): softmax gives the probabilities; class names in metadata 'classes'.")
