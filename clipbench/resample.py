"""Pillow's bilinear and bicubic resize of RGB images, the same bytes, in vectorised C.

Every shared geometry starts with a resize (CLIP: bicubic, shortest side 224; the ResNet
baseline: bilinear to 256), and Pillow's scalar resampling of a 1280² photo costs more than
decoding it. `resize` hands the image's own storage (Pillow's Arrow export: no copy) to
``clipbench/resample.c``; where that kernel cannot be built, fails its check against Pillow
at load, or the case is not one it covers, Pillow resizes as before: other modes and
filters, a side left unchanged, and images above 4 megapixels (16 MB), which Pillow stores
in more than one block, so its export refuses them. Either way the pixels are Pillow's, so
stored pixels and geometry keys do not change.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import warnings

import numpy as np
from PIL import Image

from clipbench import native

KERNEL_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
# torchvision's interpolation modes (their .value) that a described geometry may name.
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# Sizes the load-time check resizes both ways, each pass order among them.
CHECK_CASES = (((97, 61), (23, 17)), ((40, 300), (31, 50)), ((300, 41), (64, 40)))
_FIRST_USE = threading.Lock()  # the pixels job's decode threads all start by resizing


def _call(lib: ctypes.CDLL, image: Image.Image, size: tuple[int, int], resample: int):
    """The kernel's resize, or None where the image's storage cannot be exported whole."""
    import pyarrow as pa

    try:
        storage = pa.array(image)  # fixed_size_list<uint8>[4] over Pillow's own block
    except (ValueError, TypeError, pa.ArrowException):
        return None
    values = storage.values
    address = values.buffers()[1].address + values.offset + 4 * storage.offset
    out = np.empty((size[1], size[0], 3), np.uint8)
    done = lib.resize_rgbx(
        address, image.width, image.height, out.ctypes.data, size[0], size[1], int(resample)
    )
    del storage  # the export holds the image until here
    return Image.fromarray(out, "RGB") if done else None


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    lib = native.load("resample", ("-ffp-contract=off",))
    if lib is None:
        return None
    lib.resize_rgbx.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.resize_rgbx.argtypes += [ctypes.c_void_p, *[ctypes.c_int64] * 3]
    lib.resize_rgbx.restype = ctypes.c_int
    # Pillow's coefficients come from double arithmetic the kernel must repeat exactly; a
    # compiler that fused or reordered it would shift a rare pixel by one: checked once.
    rng = np.random.default_rng(0)
    for (w, h), size in CHECK_CASES:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for resample in KERNEL_FILTERS:
            ours = _call(lib, image, size, resample)
            if ours is None or ours.tobytes() != image.resize(size, resample).tobytes():
                warnings.warn("native resize differs from Pillow's; Pillow resizes", stacklevel=2)
                return None
    return lib


def resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``image.resize(size, resample)``: the same pixels, faster where the kernel serves."""
    size = (int(size[0]), int(size[1]))
    covered = (
        image.mode == "RGB"
        and resample in KERNEL_FILTERS
        and size[0] != image.width
        and size[1] != image.height
        and min(size) > 0
    )
    if not covered:
        return image.resize(size, resample)
    with _FIRST_USE:
        lib = _kernel()
    resized = _call(lib, image, size, resample) if lib is not None else None
    return resized if resized is not None else image.resize(size, resample)


class GeometricSteps:
    """A torchvision ``Compose`` of resize/crop steps on PIL images. Where they can be
    described (:meth:`describe`) they run as :class:`DescribedSteps`, resizing through
    :func:`resize`; otherwise as torchvision runs them."""

    def __init__(self, steps):
        self.steps = list(steps)
        described = self.describe()
        self._run = DescribedSteps(described) if described is not None else None

    def __call__(self, image: Image.Image) -> Image.Image:
        if self._run is not None:
            return self._run(image)
        for step in self.steps:
            image = step(image)
        return image

    def __repr__(self) -> str:
        return f"GeometricSteps({self.steps!r})"

    def describe(self) -> list[dict] | None:
        """The steps as data that :class:`DescribedSteps` runs without torchvision, or None
        where a step is not a plain ``Resize`` (bilinear/bicubic) or ``CenterCrop``."""
        from torchvision import transforms

        described: list[dict] = []
        for step in self.steps:
            if type(step) is transforms.Resize and step.interpolation.value in INTERPOLATIONS:
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                interpolation, max_size = step.interpolation.value, step.max_size
                resize = {"size": size, "interpolation": interpolation, "max_size": max_size}
                described.append({"resize": resize})
            elif type(step) is transforms.CenterCrop:
                described.append({"center_crop": list(step.size)})
            else:
                return None
        return described


def resized_size(height: int, width: int, size: list[int], max_size: int | None):
    """(height, width) after torchvision's ``Resize(size, max_size=max_size)``: both given,
    or the shorter side to ``size[0]`` and the longer in proportion, truncated (its
    ``_compute_resized_output_size``)."""
    if len(size) == 2:
        return size[0], size[1]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size[0], int(size[0] * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(image: Image.Image, size: list[int]) -> Image.Image:
    """torchvision's ``center_crop`` of a PIL image (offsets rounded as it rounds them)."""
    height, width = (size[0], size[0]) if len(size) == 1 else size
    if height > image.height or width > image.width:  # torchvision pads first: its own code
        from torchvision.transforms import functional as F

        return F.center_crop(image, [height, width])
    top = int(round((image.height - height) / 2.0))
    left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


class DescribedSteps:
    """The resize/crop steps :meth:`GeometricSteps.describe` wrote down, run on PIL images
    without importing torch or torchvision: the same images, bit for bit."""

    def __init__(self, described: list[dict]):
        self.described = described

    def __call__(self, image: Image.Image) -> Image.Image:
        for step in self.described:
            if "resize" in step:
                r = step["resize"]
                height, width = resized_size(image.height, image.width, r["size"], r["max_size"])
                if (height, width) != (image.height, image.width):
                    image = resize(image, (width, height), INTERPOLATIONS[r["interpolation"]])
            else:
                image = center_crop(image, step["center_crop"])
        return image

    def __repr__(self) -> str:
        return f"DescribedSteps({self.described!r})"
