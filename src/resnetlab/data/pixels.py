"""Any of Pillow's modes as 8-bit RGB: grey, palette, CMYK, transparency, 16- and 32-bit integers,
floats. Image.convert("RGB") alone clips wide values to 0..255 and drops alpha as it lies."""
from __future__ import annotations

import numpy as np
from PIL import Image

# Pillow's modes of more than 8 bits per value: 16-bit integers (PNG, TIFF), 32-bit integers
# (16-bit PNGs in some Pillow versions, TIFFs of 32-bit or signed integers) and floats (TIFF).
# Image.convert("RGB") clips them to 0..255 instead of scaling them: a 16-bit photo would come out
# nearly white, one of floats in [0, 1] black.
WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SIXTEEN_BITS = np.dtype(np.uint16)


ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def stored_integers(img: Image.Image) -> np.dtype | None:
    """The integer type a one-channel TIFF stores when Pillow loads it as another: signed integers
    (SampleFormat 2) and unsigned 32-bit ones come as int32 ("I"; uint32 past 2**31 wrapped negative),
    signed 8-bit as uint8 ("L", wrapped). An "I" image made in memory whose values all lie in 0..255:
    uint8 (8-bit grey converted to "I" came out nearly black, read as 16-bit). None for everything
    else: its mode says what it holds."""
    if img.format is None and img.mode == "I":  # made in memory (Image.fromarray of int32, convert("I")): no file
        low, high = img.getextrema()  # says how deep it is; values that all fit 0..255 are 8-bit ones
        return np.dtype(np.uint8) if low >= 0 and high <= 255 else None
    if img.format != "TIFF" or img.mode not in ("I", "L"):
        return None
    tags = getattr(img, "tag_v2", {})
    bits, sample_format = tags.get(258, (0,)), tags.get(339, (1,))
    bits = bits[0] if isinstance(bits, tuple) else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    if bits not in (8, 16, 32) or sample_format not in (1, 2) or (sample_format == 1 and bits < 32):
        return None
    return np.dtype(f"{'i' if sample_format == 2 else 'u'}{bits // 8}")


def as_rgb(img: Image.Image, stored: np.dtype | None = None) -> Image.Image:
    """An 8-bit RGB copy of `img`. Wide integers are mapped linearly from the full range of the type
    the file stores onto 0..255 (lowest black, highest white; one scale per type, never per image):
    16-bit (0..65535; / 257 maps 257 k to k exactly) unless `stored` (`stored_integers`) names another
    type. Float images by the scale their values are in (`float_scale`; outside it clipped, NaN as 0).
    Transparent images are laid over black: what lies under a transparent pixel is arbitrary (dropping
    alpha showed it, so three files that look alike were three inputs), and black is what most files
    store there."""
    if img.mode in WIDE_INTEGER_MODES or stored is not None:
        kind = stored or SIXTEEN_BITS
        values = np.asarray(img)
        if stored is not None and values.dtype.itemsize == kind.itemsize:
            values = values.view(kind)  # the same bytes, read as the type the file stores
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        values = (values.astype(np.float64) - low) * (255.0 / (high - low))
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        values = values * float_scale(values)
    elif img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    else:
        return img.convert("RGB")
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # 2-d uint8: mode L


def float_scale(values: np.ndarray) -> float:
    """What turns a float image's values into 0..255: judged by its 99.9th percentile, not its
    maximum, so a few bright outliers (a highlight at 1.0001) do not change the scale of the whole
    image: up to 1 it is 0..1 (x 255), up to 510 0..255 (x 1, overshoot clipped), beyond that
    0..65535 (/ 257). A sparse bright image (stars at 255 over a background of 0..2) stays 0..255."""
    high = float(np.percentile(values, 99.9)) if values.size else 0.0
    return 255.0 if high <= 1 + 1 / 255 else 1.0 if high <= 510.0 else 1 / 257  # 1 + one 8-bit level: still 0..1
