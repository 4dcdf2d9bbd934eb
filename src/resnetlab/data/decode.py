"""Decoding one image file with Pillow, and the per-image geometry of crops.

Every crop here is "resize the image, then cut a window" expressed as one box in the original
image's pixels and one output size, so Pillow resizes only the window (antialiased bilinear),
and JPEGs are decoded at a reduced DCT scale (`draft`) when the output is much smaller.
Geometry helpers are pure functions of the image size and uniform draws in [0, 1), so they can be
tested without images and driven by the seeded generators of `sampling`.
"""
from __future__ import annotations

import math
import os
import warnings
from contextlib import nullcontext
from typing import Callable

import numpy as np
from PIL import ExifTags, Image, ImageOps

from resnetlab.errors import UserError
from resnetlab.files import special_kind

from .pixels import as_rgb, stored_integers

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels
Plan = Callable[[int, int], list[tuple[Box, tuple[int, int]]]]  # (w, h) -> [(box, (out_w, out_h))]


EXIF_FORMATS = ("JPEG", "MPO", "TIFF", "PNG", "WEBP", "AVIF", "HEIF")  # formats whose EXIF orientation is honoured
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


# What Pillow raises for a file it cannot or will not decode. DecompressionBombError (an image
# over 2 x Image.MAX_IMAGE_PIXELS, e.g. a 20000 x 20000 PNG of a few kB) is not an OSError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
HUGE_PIXELS = 50_000_000  # an image this big that runs out of memory is skipped as too large (7000 x 7000 and up)


class BadImage(Exception):
    """An image file that cannot be read; str() names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}  # data.interpolation; antialiased in Pillow


def resample_filter(interpolation: str):
    if interpolation not in RESAMPLE:
        raise UserError(f"unknown data.interpolation {interpolation!r}; choose one of {', '.join(RESAMPLE)}")
    return RESAMPLE[interpolation]


def decode_crops(path, plan: Plan, interpolation: str = "bilinear") -> list[np.ndarray]:
    """Decode `path` once and return uint8 (h, w, 3) arrays for each (box, size) of plan(w, h).
    `path` may also be a PIL image already in memory: it is read the same way and left unchanged."""
    resample, pixels = resample_filter(interpolation), None
    try:
        with opened(path) as img:
            pixels = img.size
            orientation = exif_orientation(img)
            # A JPEG file is planned before it is decoded, on its upright size, so that it decodes at the
            # smallest DCT scale (`draft`) that keeps every window at least as big as its output size.
            jpeg = img.format == "JPEG" and not isinstance(path, Image.Image)  # draft() changes the image
            if jpeg:
                w, h = img.size[::-1] if orientation in QUARTER_TURNS else img.size
                steps = plan(w, h)
                factor = max(max(o[0] / max(b[2] - b[0], 1e-6), o[1] / max(b[3] - b[1], 1e-6)) for b, o in steps)
                if factor < 1:
                    img.draft("RGB", (math.ceil(img.size[0] * factor), math.ceil(img.size[1] * factor)))
            if not all(img.size):  # only a PIL image in memory can be empty; no plan can cut a window of it
                raise BadImage(path, f"an empty image ({img.size[0]} x {img.size[1]} pixels)")
            stored = stored_integers(img)  # read from the file's tags, before a transposed copy loses them
            if orientation != 1:  # decodes (at the draft scale) into a new upright image; `path`'s stays as it is
                img = ImageOps.exif_transpose(img)
            rgb = as_rgb(img, stored)  # grey, palette, CMYK, RGBA, 16-bit, float ... -> 8-bit RGB; decodes the file
            if not jpeg:  # planned on the decoded image: Pillow turns a TIFF upright itself as it loads it
                w, h = rgb.size
                steps = plan(w, h)
            sx, sy = rgb.size[0] / w, rgb.size[1] / h
    except DECODE_ERRORS as err:
        raise BadImage(path, why_unreadable(err)) from None
    except MemoryError:  # one huge image (a 9000 x 9000 scan) is this file's problem, not every other's
        if pixels is None or pixels[0] * pixels[1] < HUGE_PIXELS:
            raise  # an ordinary image: memory is short for everything (the command says so in one line)
        raise BadImage(path, f"too large to decode in the memory left ({pixels[0]} x {pixels[1]} pixels)") from None
    out = []
    for (l, t, r, b), size in steps:
        # Clamped to the image: rounding may push a window's edge a fraction of a pixel outside.
        box = (max(0.0, l * sx), max(0.0, t * sy), min(rgb.size[0], r * sx), min(rgb.size[1], b * sy))
        if size == rgb.size and box == (0, 0, *rgb.size):
            out.append(np.array(rgb))
        else:
            out.append(np.array(rgb.resize(size, resample, box=box)))
    return out


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) of a photo, 1 when it has none. An image made in memory from an opened
    one (convert, copy, resize: format None) keeps its EXIF, and so its rotation. An EXIF block Pillow
    cannot parse (the pixels may still be fine) means no rotation, as it does for JPEGs."""
    if img.format not in EXIF_FORMATS and img.format is not None:
        return 1
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODE_ERRORS:
        return 1
    return orientation if orientation in range(1, 9) else 1


def quiet_pillow() -> None:
    """Leave Pillow's own warnings out of a command's output: a corrupt EXIF block (read here as no
    rotation), a palette's transparency, a large image under the decompression-bomb limit (decoded;
    over it, refused in words). Installed once per command, inside its catch_warnings (cli.run_command):
    per image, catch_warnings is not thread-safe and resets which warnings were already shown."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")


def header_size(source) -> tuple[int, int] | None:
    """(width, height) of an image file (its header only) or PIL image; None when it cannot be read
    (decoding it says why)."""
    try:
        with opened(source) as img:
            return img.size
    except DECODE_ERRORS:
        return None


def unreadable_headers(paths: list[str]) -> list[tuple[str, str]]:
    """(path, reason) of the files whose header Pillow cannot read: not an image, empty, a
    decompression bomb. A file whose header reads but whose data is cut short is found when it is
    decoded."""
    bad = []
    for path in paths:
        try:
            with opened(path) as img:
                img.size  # noqa: B018 (opening parses the header; the size is what a plan needs)
        except DECODE_ERRORS as err:
            bad.append((path, why_unreadable(err)))
    return bad


def opened(source):
    """A context manager giving the PIL image of a path (closed after) or the image itself (kept open).
    A path that is not a regular file is refused before it is opened: opening a FIFO waits for a
    writer for ever, and a device (a link to /dev/zero, /dev/stdin) has no end or no image."""
    if isinstance(source, Image.Image):
        return nullcontext(source)
    kind = special_kind(source)
    if kind:
        raise SpecialFile(f"not a regular file ({kind})")
    return Image.open(source)


class SpecialFile(OSError):
    """A path with an image's name that is a FIFO, socket or device."""


def why_unreadable(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb ({text.rstrip('.')})"
    if isinstance(err, FileNotFoundError):
        return "no such file" + (" (a dangling symbolic link)" if os.path.islink(err.filename or "") else "")
    if isinstance(err, OSError) and err.strerror and err.filename:  # not "[Errno 13] Permission denied: 'PATH'"
        return err.strerror
    if "cannot identify image file" in text:
        return "not an image Pillow can read"
    if "truncated" in text.lower():
        return "truncated or corrupt image (" + text + ")"
    return text


def center_box(w: int, h: int, side: int, size: int) -> Box:
    """Shorter side resized to `side`, then the centred size x size window, to the pixel as torchvision's
    Resize(side) + CenterCrop(size) (`resized_shape`, `center_offset`), as one box in source pixels."""
    rw, rh = resized_shape(w, h, side)
    left, top = center_offset(rw, size) * w / rw, center_offset(rh, size) * h / rh
    return (left, top, left + size * w / rw, top + size * h / rh)


def center_offset(length: int, size: int) -> int:
    """torchvision's CenterCrop offset of a size-long window in `length` (round half to even, as it does)."""
    return int(round((length - size) / 2.0))


def scale_box(w: int, h: int, side, size: int, ux, uy) -> np.ndarray:
    """Shorter side resized to `side` (He et al. Sec. 3.4 scale augmentation), a size x size
    window at a uniformly drawn integer offset of the resized image. Vectorised: side, ux, uy
    may be arrays (one per image); returns (..., 4) boxes."""
    scale = np.asarray(side, dtype=np.float64) / min(w, h)
    rw, rh = np.maximum(size, np.round(w * scale)), np.maximum(size, np.round(h * scale))
    left, top = np.floor(np.asarray(ux) * (rw - size + 1)), np.floor(np.asarray(uy) * (rh - size + 1))
    return np.stack([left / scale, top / scale, (left + size) / scale, (top + size) / scale], -1)


def rrc_box(w: int, h: int, u: np.ndarray, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """Random-resized-crop window (Szegedy et al. 2015): the first of K attempts that fits, else
    the centred square. u: (..., K, 4) uniforms (area, aspect, x, y); returns (..., 4) boxes."""
    ua, ur, ux, uy = np.moveaxis(np.asarray(u, dtype=np.float64), -1, 0)  # each (..., K)
    target = w * h * (scale[0] + ua * (scale[1] - scale[0]))
    aspect = np.exp(math.log(ratio[0]) + ur * (math.log(ratio[1]) - math.log(ratio[0])))
    cw, ch = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.argmax(-1)[..., None]
    cw, ch, ux, uy = (np.take_along_axis(a, first, -1)[..., 0] for a in (cw, ch, ux, uy))
    left, top = np.floor(ux * (w - cw + 1)), np.floor(uy * (h - ch + 1))
    boxes = np.stack([left, top, left + cw, top + ch], -1)
    return np.where(fits.any(-1)[..., None], boxes, np.asarray(square_box(w, h)))


def square_box(w: int, h: int) -> Box:
    side = min(w, h)
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


def resized_shape(w: int, h: int, side: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to `side`, as torchvision's Resize(side): the longer side truncated."""
    return (side, int(side * h / w)) if w <= h else (int(side * w / h), side)


def load_images(paths: list, size: int, eval_resize: int, interpolation: str = "bilinear"):
    """Arbitrary image files (or PIL images) as a uint8 (N, 3, size, size) batch for prediction: shorter side
    resized to eval_resize, centre size x size crop (pass eval_resize=size for CIFAR-style models).
    Returns (images, failed) where failed lists (path, reason) of files that could not be read;
    images holds the others, in order."""
    import torch  # local: keeps the geometry helpers above importable without torch

    arrays, failed = [], []
    for path in paths:
        try:
            plan = lambda w, h: [(center_box(w, h, eval_resize, size), (size, size))]  # noqa: E731
            arrays.append(decode_crops(path, plan, interpolation)[0])
        except BadImage as err:
            failed.append((str(path), err.reason))
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), failed
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), failed
