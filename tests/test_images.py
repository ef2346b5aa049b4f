import io

import numpy as np
import pytest
from PIL import Image

from clipbench.errors import InputError
from clipbench.images import decode_image
from tests.conftest import png_bytes

RED = (220, 30, 30)


def pixel(blob, xy=(5, 5)):
    image = decode_image(blob, 7)
    assert image.mode == "RGB"
    return image.getpixel(xy)


def test_rgb_png_round_trips_exactly():
    assert pixel(png_bytes(Image.new("RGB", (10, 10), RED))) == RED


def test_rgb_jpeg_decodes_close_to_source():
    got = pixel(png_bytes(Image.new("RGB", (16, 16), RED), "JPEG", quality=95))
    assert np.abs(np.subtract(got, RED)).max() <= 3


def test_palette_without_transparency():
    image = Image.new("RGB", (10, 10), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    assert pixel(png_bytes(image)) == RED


def test_palette_transparency_becomes_white():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))  # left half red, right half index 0 = transparent
    blob = png_bytes(image, transparency=0)
    assert pixel(blob, (1, 1)) == RED
    assert pixel(blob, (8, 1)) == (255, 255, 255)


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (10, 10), (*RED, 255))
    image.paste((0, 0, 0, 0), (5, 0, 10, 10))
    blob = png_bytes(image)
    assert pixel(blob, (1, 1)) == RED
    assert pixel(blob, (8, 1)) == (255, 255, 255)


def test_half_transparent_rgba_blends():
    blob = png_bytes(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert all(abs(c - 127) <= 1 for c in pixel(blob, (1, 1)))


def test_grey_and_grey_alpha():
    assert pixel(png_bytes(Image.new("L", (10, 10), 100))) == (100, 100, 100)
    la = Image.new("LA", (10, 10), (100, 255))
    la.paste((0, 0), (5, 0, 10, 10))
    assert pixel(png_bytes(la), (1, 1)) == (100, 100, 100)
    assert pixel(png_bytes(la), (8, 1)) == (255, 255, 255)


def test_sixteen_bit_uses_full_range():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[:, 4:] = 32896  # 128 * 257
    blob = png_bytes(Image.fromarray(arr))
    assert Image.open(io.BytesIO(blob)).mode == "I;16"
    assert pixel(blob, (1, 1)) == (255, 255, 255)
    assert pixel(blob, (6, 1)) == (128, 128, 128)


def test_cmyk_jpeg():
    image = Image.new("RGB", (16, 16), RED).convert("CMYK")
    got = pixel(png_bytes(image, "JPEG", quality=95))
    assert np.abs(np.subtract(got, RED)).max() <= 6


def test_bilevel():
    assert pixel(png_bytes(Image.new("1", (8, 8), 1))) == (255, 255, 255)


@pytest.mark.parametrize("blob", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b""])
def test_undecodable_bytes_name_the_row(blob):
    with pytest.raises(InputError, match="row 7"):
        decode_image(blob, 7)


def test_truncated_jpeg_names_the_row():
    blob = png_bytes(Image.new("RGB", (64, 64), RED), "JPEG")
    with pytest.raises(InputError, match="row 7: image bytes cannot be decoded"):
        decode_image(blob[: len(blob) // 3], 7)


def test_decompression_bomb_limit_stays_on(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 20×20 = 400 > 2 × limit
    with pytest.raises(InputError, match="row 7: image exceeds PIL's decompression-bomb"):
        decode_image(png_bytes(Image.new("RGB", (20, 20))), 7)


@pytest.mark.parametrize("mode", ["RGB", "CMYK"])
def test_previews_decode_a_jpeg_at_reduced_scale_never_below_the_size(mode):
    buffer = io.BytesIO()
    Image.new(mode, (1280, 400), "red" if mode == "RGB" else (0, 255, 255, 0)).save(
        buffer, format="JPEG"
    )
    full = decode_image(buffer.getvalue(), 0)
    preview = decode_image(buffer.getvalue(), 0, at_least=(96, 96))
    assert full.size == (1280, 400) and preview.mode == full.mode == "RGB"
    assert preview.size == (320, 100)  # 1/4: the smallest scale keeping both sides ≥ 96
    assert np.abs(np.asarray(preview)[50, 160].astype(int) - np.asarray(full)[200, 640]).max() < 8
    png = decode_image(png_bytes(Image.new("RGB", (300, 200))), 1, at_least=(96, 96))
    assert png.size == (300, 200)  # other formats decode in full
