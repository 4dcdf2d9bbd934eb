"""Images of more than 8 bits per value decode to the 8-bit image they stand for (Pillow's
convert("RGB") clips them: a 16-bit photo came out white, floats in [0, 1] black)."""
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.data.decode import BadImage, decode_crops, quiet_pillow



def whole(source) -> np.ndarray:
    image, = decode_crops(source, lambda w, h: [((0, 0, w, h), (w, h))])
    return image


@pytest.fixture
def grey8() -> np.ndarray:
    """A 40 x 24 grey gradient with every value 0..255 somewhere, and a few random pixels."""
    values = np.resize(np.arange(256, dtype=np.uint8), (24, 40))
    values[::5, ::7] = np.random.default_rng(0).integers(0, 256, values[::5, ::7].shape)
    return values


def test_a_16_bit_png_decodes_as_its_8_bit_original(tmp_path, grey8):
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # Pillow keeps the 16 bits
    eight, sixteen = whole(tmp_path / "grey8.png"), whole(tmp_path / "grey16.png")
    assert eight.shape == sixteen.shape == (24, 40, 3)
    np.testing.assert_array_equal(sixteen, eight)


def test_32_bit_integer_images_are_read_as_16_bit(grey8):
    wide = Image.fromarray(grey8.astype(np.int32) * 257, mode="I")
    np.testing.assert_array_equal(whole(wide)[..., 0], grey8)


def test_an_8_bit_image_made_32_bit_in_memory_reads_as_8_bit(tmp_path, grey8):
    """Image.fromarray of an int32 array or convert("I") of an 8-bit grey image (values 0..255) was read as
    16-bit: nearly black. A file keeps its own depth: a 16-bit PNG as dark as that stays dark."""
    for made in (Image.fromarray(grey8).convert("I"), Image.fromarray(grey8.astype(np.int32), mode="I")):
        np.testing.assert_array_equal(whole(made), whole(Image.fromarray(grey8)))
    Image.fromarray(grey8.astype(np.uint16)).save(tmp_path / "dark16.png")  # 0..255 of 65535
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    np.testing.assert_array_equal(whole(tmp_path / "dark16.png")[..., 0], np.rint(grey8 / 257).astype(np.uint8))
    negative = Image.fromarray(grey8.astype(np.int32) - 1, mode="I")  # not 0..255: the 16-bit reading, as before
    np.testing.assert_array_equal(whole(negative)[..., 0], np.rint(np.clip(grey8.astype(np.int32) - 1, 0, None) / 257).astype(np.uint8))


def raw_tiff(path: Path, values: np.ndarray, sample_format: int) -> None:
    """A one-channel uncompressed TIFF of `values` as they are, with its SampleFormat tag (1 unsigned,
    2 signed): Pillow writes int16 as int32 and no unsigned 32-bit at all, so the file is made by hand."""
    h, w = values.shape
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    tags = [(256, 4, w), (257, 4, h), (258, 3, values.dtype.itemsize * 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, h), (279, 4, len(data)), (339, 3, sample_format)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd)


@pytest.mark.parametrize("kind", [np.int8, np.int16, np.int32, np.uint32])
def test_signed_and_32_bit_tiffs_map_their_types_full_range_onto_0_255(tmp_path, grey8, kind):
    """Pillow loads these as int32 or uint8 (uint32 past 2**31 and int8 below 0 wrapped): read as a
    16-bit value, a signed 16-bit TIFF came out at half brightness, a 32-bit one mostly white."""
    info = np.iinfo(kind)
    values = np.rint(info.min + grey8.astype(np.float64) * ((float(info.max) - info.min) / 255)).astype(kind)
    raw_tiff(tmp_path / "wide.tif", values, 2 if info.min < 0 else 1)
    np.testing.assert_array_equal(whole(tmp_path / "wide.tif")[..., 0], grey8)
    raw_tiff(tmp_path / "sixteen.tif", grey8.astype(np.uint16) * 257, 1)  # the unsigned 16-bit reading, unchanged
    np.testing.assert_array_equal(whole(tmp_path / "sixteen.tif")[..., 0], grey8)


def test_float_images_in_0_1_are_scaled_and_others_clipped(tmp_path, grey8):
    Image.fromarray(grey8.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    np.testing.assert_array_equal(whole(tmp_path / "unit.tif")[..., 0], grey8)
    wide = np.array([[-5.0, 0.0, 128.0, 300.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(whole(Image.fromarray(wide))[0, :, 0], [0, 0, 128, 255, 0])


def test_an_os_error_is_said_in_its_own_words_without_the_errno_and_the_path_again(tmp_path, monkeypatch):
    """It read `F: [Errno 13] Permission denied: 'F'`."""
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)

    def locked(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", locked)
    with pytest.raises(BadImage) as err:
        decode_crops(str(path), lambda w, h: [((0, 0, w, h), (8, 8))])
    assert str(err.value) == f"{path}: Permission denied"


# Orientation -> the transpose that shows the stored pixels upright; INVERSE stores an upright image so.
SHOWN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}
INVERSE = {**SHOWN, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
def test_every_lossless_format_is_read_upright_for_every_orientation(tmp_path, suffix, orientation):
    """Pillow turns a TIFF upright itself as it loads it (and reports the upright size): it was turned
    a second time, read stretched, for orientations 5-8."""
    from resnetlab.data.decode import center_box

    upright = np.random.default_rng(orientation).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    stored = Image.fromarray(upright)
    stored = stored.transpose(INVERSE[orientation]) if orientation in INVERSE else stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / f"photo{suffix}", exif=exif, **({"lossless": True} if suffix == ".webp" else {}))
    np.testing.assert_array_equal(whole(tmp_path / f"photo{suffix}"), upright)
    crop, = decode_crops(tmp_path / f"photo{suffix}", lambda w, h: [(center_box(w, h, 16, 16), (16, 16))])
    expected = Image.fromarray(upright).resize((16, 16), Image.BILINEAR, box=center_box(44, 30, 16, 16))
    np.testing.assert_array_equal(crop, np.asarray(expected))


def test_a_corrupt_exif_block_means_no_rotation_and_no_pillow_warning(tmp_path, grey8):
    """Pillow decodes such a PNG; resnetlab refused it ("not a TIFF file"), and Pillow's own
    "Corrupt EXIF data" warning reached the user's terminal for other files."""
    import struct
    import zlib

    Image.fromarray(grey8).save(tmp_path / "plain.png")
    data = (tmp_path / "plain.png").read_bytes()
    junk = bytes(range(7, 107))
    chunk = struct.pack(">I", len(junk)) + b"eXIf" + junk + struct.pack(">I", zlib.crc32(b"eXIf" + junk))
    (tmp_path / "exif.png").write_bytes(data[:33] + chunk + data[33:])  # after the IHDR chunk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_pillow()  # as every command does
        np.testing.assert_array_equal(whole(tmp_path / "exif.png")[..., 0], grey8)


def test_a_large_image_under_the_bomb_limit_decodes_without_pillows_warning(tmp_path, grey8, monkeypatch):
    Image.fromarray(grey8).save(tmp_path / "big.png")  # 960 pixels: "large" once the limit is 600
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_pillow()
        np.testing.assert_array_equal(whole(tmp_path / "big.png")[..., 0], grey8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # over twice the limit: refused, in words
    with pytest.raises(BadImage, match="big.png"):
        whole(tmp_path / "big.png")


def test_a_few_bright_outliers_do_not_change_a_float_images_scale(grey8):
    """The scale was chosen by the maximum: one pixel at 1.0001 turned a 0..1 image black, and a
    0..65535 image was clipped to white."""
    unit = grey8.astype(np.float32) / 255
    unit[0, 0] = 1.0001
    expected = grey8.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(whole(Image.fromarray(unit))[..., 0], expected)
    np.testing.assert_array_equal(whole(Image.fromarray(grey8.astype(np.float32) * 257))[..., 0], grey8)
    np.testing.assert_array_equal(whole(Image.fromarray(grey8.astype(np.float32)))[..., 0], grey8)
    stars = np.zeros((40, 50), dtype=np.float32)  # 0..255 night sky: a background of 0..2, a few stars at 255
    stars[:, :] = np.resize(np.array([0.0, 1.0, 2.0], dtype=np.float32), stars.shape)
    stars[::20, ::25] = 255
    np.testing.assert_array_equal(whole(Image.fromarray(stars))[..., 0], stars.astype(np.uint8))


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P", "RGB+tRNS"])
def test_transparent_pixels_are_laid_over_black_whatever_lies_under_them(tmp_path, kind):
    rng = np.random.default_rng(0)
    alpha = rng.choice(np.array([0, 128, 255], dtype=np.uint8), (12, 16))
    colour = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    under = [colour.copy(), colour.copy()]
    under[1][alpha == 0] = 255  # another colour where nothing shows: the same image to the eye
    if kind in ("P", "RGB+tRNS"):
        alpha[alpha == 128] = 255  # these carry one transparent colour (index), not levels
    palette = list(rng.integers(0, 256, 768, dtype=np.uint8))
    decoded = []
    for k, rgb in enumerate(under):
        if kind == "RGBA":
            img = Image.fromarray(np.dstack([rgb, alpha]))
        elif kind == "LA":
            img = Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA")
        elif kind == "P":
            img = Image.fromarray(np.where(alpha == 0, 7 + k, rgb[..., 0] % 7).astype(np.uint8), mode="P")
            img.putpalette(palette)
            img.info["transparency"] = 7 + k
        else:
            rgb = np.where((alpha == 0)[..., None], np.uint8(254 - k), rgb // 2)
            img = Image.fromarray(rgb)
            img.info["transparency"] = (254 - k,) * 3
        extra = {"transparency": img.info["transparency"]} if kind in ("P", "RGB+tRNS") else {}
        img.save(tmp_path / f"{kind}{k}.png", **extra)
        decoded.append(whole(tmp_path / f"{kind}{k}.png"))
    np.testing.assert_array_equal(decoded[0], decoded[1])
    assert (decoded[0][alpha == 0] == 0).all()  # black where nothing shows
    if kind in ("RGBA", "LA"):
        shown = colour if kind == "RGBA" else np.repeat(colour[..., :1], 3, axis=2)
        half = alpha == 128
        assert np.abs(decoded[0][half].astype(int) - shown[half].astype(int) * 128 / 255).max() <= 1
        np.testing.assert_array_equal(decoded[0][alpha == 255], shown[alpha == 255])


def test_every_command_leaves_pillows_warnings_out_of_its_output(tmp_path, grey8, monkeypatch, capsys):
    from resnetlab.cli import main

    Image.fromarray(grey8).convert("RGB").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 960 pixels: under twice the limit, decoded
    checkpoint = Path(__file__).with_name("fixtures") / "checkpoint_v1_resnet8.pt"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["predict", str(checkpoint), str(tmp_path / "big.png"), "--precision", "fp32", "--device", "cpu"]) == 0
    assert [w for w in shown if issubclass(w.category, Image.DecompressionBombWarning)] == []
    assert "PIL" not in capsys.readouterr().err


@pytest.mark.skipif(".avif" not in Image.registered_extensions(), reason="this Pillow does not read AVIF")
def test_an_avif_photo_is_read_upright():
    """AVIF files became images, but their EXIF rotation was not read: a portrait came out sideways."""
    import io

    exif = Image.Exif()
    exif[0x0112] = 6
    data = io.BytesIO()
    Image.new("RGB", (60, 30), (200, 10, 10)).save(data, "AVIF", exif=exif)
    assert whole(Image.open(data)).shape == (60, 30, 3)  # 30 wide, 60 tall: turned as Pillow's exif_transpose does


def test_a_huge_image_that_runs_out_of_memory_is_skipped_and_the_others_are_classified(tmp_path, monkeypatch, capsys):
    """Under a memory limit one 9000 x 9000 PNG failed the whole predict ('out of memory; lower
    --batch-size'), naming no file, printing no result, though the images before it had decoded."""
    import resnetlab.data.decode as decode
    from resnetlab.cli import main

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (90, 80), (10, 200, 10)).save(tmp_path / "huge.png")
    real = decode.as_rgb

    def short_of_memory(img, *args):
        if img.size == (90, 80):
            raise MemoryError()
        return real(img, *args)

    monkeypatch.setattr(decode, "as_rgb", short_of_memory)
    monkeypatch.setattr(decode, "HUGE_PIXELS", 90 * 80)
    checkpoint = Path(__file__).with_name("fixtures") / "checkpoint_v1_resnet8.pt"
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), str(tmp_path / "huge.png"), "--topk", "1",
                 "--precision", "fp32"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{tmp_path / 'a.png'}  ") and len(out.splitlines()) == 1
    assert err == (f"resnetlab predict: warning: skipped {tmp_path / 'huge.png'}: too large to decode in the memory "
                   "left (90 x 80 pixels)\n")
    monkeypatch.setattr(decode, "HUGE_PIXELS", 90 * 80 + 1)  # an ordinary image: memory is short for all
    assert main(["predict", str(checkpoint), str(tmp_path / "huge.png"), "--precision", "fp32"]) == 2
    assert "out of memory" in capsys.readouterr().err
