"""Images of more than 8 bits per value decode to the 8-bit image they stand for (Pillow's
convert("RGB") clips them: a 16-bit photo came out white, floats in [0, 1] black)."""
import numpy as np
import pytest
from PIL import Image

from resnetlab.data.decode import BadImage, decode_crops



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
