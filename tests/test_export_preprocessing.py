"""A deployer who follows an ONNX export's `preprocessing` metadata with Pillow and numpy alone (no
resnetlab code) gets the probabilities `resnetlab predict` gives: small images (read whole at their
own size), large ones (shorter side resized, centre crop) and EXIF-rotated JPEGs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_export import train_checkpoint

from resnetlab.inference.export import export_checkpoint
from resnetlab.inference.predictor import Predictor, all_probs

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("export_preprocessing"))  # 16 px input


def photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth random RGB image (coarse noise enlarged): resampling differences show, as in a photo."""
    coarse = np.random.default_rng(seed).integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.BICUBIC)


def rotated_jpeg(path, w: int, h: int, orientation: int, seed: int):
    image = photo(w, h, seed)
    exif = image.getexif()
    exif[0x0112] = orientation  # EXIF Orientation: 6 = turn 90 degrees clockwise to view, 8 = counter-clockwise
    image.save(path, exif=exif, quality=95)


def window(image: Image.Image, resize: int, crop: int, resample) -> np.ndarray:
    """The metadata's 'window': shorter side to `resize` (longer side floored), centre crop at offset
    round((resized - crop) / 2), resampled from the original image through a box."""
    w, h = image.size
    rw, rh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    left, top = round((rw - crop) / 2), round((rh - crop) / 2)  # Python's round: halves to even
    box = (left * w / rw, top * h / rh, left * w / rw + crop * w / rw, top * h / rh + crop * h / rh)
    return np.asarray(image.resize((crop, crop), resample, box=box), dtype=np.float32)


def follow(path, pre: dict) -> np.ndarray:
    """(3, S, S) float32 per the metadata, literally."""
    assert pre["exif_orientation"].startswith("applied") and pre["color"] == "RGB"
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    resample = FILTERS[pre["interpolation"].split(",")[0]]
    small, side = pre["small_images"], max(image.size)
    if side > small["max_side"]:
        pixels = window(image, pre["resize"], pre["crop"], resample)
    else:  # whole at its own size: shorter side to L, centre L x L, then to S in float, rounded
        assert small["resize"] == small["crop"] == "L"
        pixels = window(image, side, side, FILTERS[small["interpolation"].split(",")[0]])
        size = small["then_resize_to"]
        if side != size:
            assert small["then_interpolation"].startswith("bilinear, antialiased, in float32 then rounded")
            channels = [Image.fromarray(pixels[..., c], "F").resize((size, size), Image.BILINEAR) for c in range(3)]
            pixels = np.clip(np.round(np.stack([np.asarray(c) for c in channels], -1)), 0, 255)
    return pixels.transpose(2, 0, 1).astype(np.float32)


def test_following_the_onnx_metadata_gives_predicts_probabilities(ckpt_path, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    files = {"small non-square": tmp_path / "wide.png", "small square": tmp_path / "square.png",
             "large photo": tmp_path / "photo.png", "EXIF-rotated JPEG": tmp_path / "turned.jpg",
             "small EXIF-rotated JPEG": tmp_path / "small_turned.jpg"}
    photo(48, 30, 1).save(files["small non-square"])
    photo(24, 24, 2).save(files["small square"])
    photo(200, 150, 3).save(files["large photo"])
    rotated_jpeg(files["EXIF-rotated JPEG"], 90, 30, 6, 4)  # 30 x 90 upright; too small a scale change for draft
    rotated_jpeg(files["small EXIF-rotated JPEG"], 40, 60, 8, 5)
    export_checkpoint(ckpt_path, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    predictor = Predictor.from_checkpoint(ckpt_path, device="cpu", precision="fp32", fuse=False, channels_last="false")
    paths = [str(f) for f in files.values()]
    idx, expected = all_probs(predictor, paths)
    assert idx.tolist() == list(range(len(paths)))
    for (what, path), want in zip(files.items(), expected):
        logits = session.run(None, {"images": follow(path, meta["preprocessing"])[None]})[0]
        got = torch.from_numpy(logits).softmax(1)[0]
        # fp32: the float resize of a small image lands on exact halves, which torch's float32 and Pillow's
        # double round apart (a pixel 1/255 off here and there: 5e-6 in probability, measured)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5, msg=what)
