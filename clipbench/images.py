"""Decoding dataset image bytes into RGB PIL images, whatever mode they were stored in."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipbench.errors import InputError

# Transparent pixels are composited onto white: line-art datasets (Pokémon, Naruto) draw on
# white, and dropping alpha would expose arbitrary colours under transparent areas.
BACKGROUND = (255, 255, 255)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit/int/float pixels at 255; rescale the full range instead.
    arr = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F":
        scale = 1.0 if arr.size == 0 or float(arr.max()) <= 1.0 else float(arr.max())
    else:  # "I" (32-bit signed): use the observed maximum
        scale = max(float(arr.max()), 1.0) if arr.size else 1.0
    return Image.fromarray(np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, I, F, YCbCr, …) to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_bit_depth_to_l(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "L" and "transparency" in image.info:
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


# What PIL raises for bytes it cannot read; EOFError and struct.error come from plugins reading
# truncated or corrupt data.
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error)
# Every image error names the dataset option that leaves such rows out instead of failing.
SKIP_HINT = "or set `on_bad_image: skip` in the dataset's config to leave such rows out"


class BadImageError(InputError):
    """Image bytes that cannot be used. ``reason`` says why in a few words, without the row or
    the fix, for the list of skipped rows that ``on_bad_image: skip`` records."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def _row_errors(row_id: int | str, failure: str) -> Iterator[None]:
    """Turn PIL's errors into one message that names the dataset row and the fix."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise BadImageError(
            f"row {row_id}: image exceeds PIL's decompression-bomb pixel limit ({exc}); "
            f"remove the row or downscale the image, {SKIP_HINT}",
            "image exceeds PIL's decompression-bomb pixel limit",
        ) from exc
    except DECODE_ERRORS as exc:
        raise BadImageError(
            f"row {row_id}: image bytes {failure} ({type(exc).__name__}: {exc}); "
            f"fix or remove this row in the source dataset, {SKIP_HINT}",
            # UnidentifiedImageError's text only repeats the failure, plus an object address.
            f"image bytes {failure}"
            if isinstance(exc, UnidentifiedImageError)
            else f"image bytes {failure} ({type(exc).__name__}: {exc})",
        ) from exc


def _require_bytes(data: bytes | None, row_id: int | str) -> None:
    if not data:
        raise BadImageError(
            f"row {row_id}: no image bytes stored; fix or remove this row, {SKIP_HINT}",
            "no image bytes stored",
        )


def check_image_header(data: bytes | None, row_id: int | str) -> None:
    """Read only the header: cheap, and catches garbage bytes before any model runs."""
    _require_bytes(data, row_id)
    with _row_errors(row_id, "are not a recognised image format"):
        Image.open(io.BytesIO(data)).close()


def decode_image(
    data: bytes, row_id: int | str, at_least: tuple[int, int] | None = None
) -> Image.Image:
    """Decode encoded image bytes to RGB; errors name the dataset row they came from.

    ``at_least``: for previews only, never for a model's input: a JPEG may be decoded at a
    reduced scale (1/2 to 1/8, PIL's draft mode) no smaller than this size, several times
    faster than in full."""
    _require_bytes(data, row_id)
    with _row_errors(row_id, "cannot be decoded"), Image.open(io.BytesIO(data)) as image:
        if at_least is not None:
            image.draft(None, at_least)
        image.load()
        return to_rgb(image)


def image_problem(data: bytes | None, row_id: int | str) -> str | None:
    """Why these bytes cannot be decoded in full (header, pixel data, decompression-bomb limit),
    in a few words; None when they decode exactly as every later stage will decode them."""
    try:
        check_image_header(data, row_id)
        decode_image(data, row_id)
    except BadImageError as exc:
        return exc.reason
    return None
