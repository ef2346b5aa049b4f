"""The vectorised resize against Pillow's own, byte for byte."""

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from clipbench import native, resample

HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


def random_image(rng, width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(autouse=True)
def fresh_kernel():
    resample._kernel.cache_clear()
    yield
    resample._kernel.cache_clear()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler")
def test_the_kernel_builds_and_passes_its_check_where_a_compiler_exists():
    assert resample._kernel() is not None


# Shrinking and growing, each pass order (Pillow runs the vertical pass first when the height
# shrinks more than twice as much as the width), windows cut at both edges, a 1-pixel side,
# row counts that are not a multiple of the kernel's 16, the workflow's own 1280² → 224².
SIZES = [
    ((1280, 1280), (224, 224)),
    ((1280, 960), (298, 224)),
    ((333, 1021), (224, 686)),
    ((640, 2000), (500, 60)),
    ((37, 19), (101, 77)),
    ((513, 17), (7, 3)),
    ((2, 50), (1, 49)),
    ((300, 300), (299, 1)),
]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler")
@pytest.mark.parametrize("filter", resample.KERNEL_FILTERS)
@pytest.mark.parametrize(("source", "size"), SIZES)
def test_resize_is_pillows_byte_for_byte(source, size, filter):
    rng = np.random.default_rng(sum(source) + sum(size))
    image = random_image(rng, *source)
    # Flat regions and hard edges saturate the bicubic lobes: the sums' clipping counts.
    pixels = np.asarray(image).copy()
    pixels[: source[1] // 2, : source[0] // 3] = 255
    pixels[source[1] // 2 :, source[0] // 3 : source[0] // 2] = 0
    image = Image.fromarray(pixels, "RGB")
    lib = resample._kernel()
    assert lib is not None
    assert resample._call(lib, image, size, filter) is not None  # the kernel itself ran
    ours = resample.resize(image, size, filter)
    assert ours.mode == "RGB" and ours.size == size
    assert ours.tobytes() == image.resize(size, filter).tobytes()


def test_random_sizes_match_pillow():
    rng = np.random.default_rng(7)
    for _ in range(60):
        source = tuple(int(v) for v in rng.integers(1, 400, 2))
        size = tuple(int(v) for v in rng.integers(1, 300, 2))
        image = random_image(rng, *source)
        for filter in resample.KERNEL_FILTERS:
            expected = image.resize(size, filter).tobytes()
            assert resample.resize(image, size, filter).tobytes() == expected, (source, size)


@pytest.mark.parametrize(
    ("mode", "filter", "size", "source"),
    [
        ("L", Image.Resampling.BICUBIC, (20, 30), (64, 48)),  # not RGB
        ("RGB", Image.Resampling.LANCZOS, (20, 30), (64, 48)),  # a filter left to Pillow
        ("RGB", Image.Resampling.BICUBIC, (64, 30), (64, 48)),  # one side unchanged
        ("RGB", Image.Resampling.BICUBIC, (64, 48), (64, 48)),  # no change at all
        ("RGB", Image.Resampling.BICUBIC, (30, 20), (2049, 2048)),  # in two blocks
    ],
)
def test_cases_the_kernel_does_not_cover_are_pillows(mode, filter, size, source):
    image = random_image(np.random.default_rng(3), *source, mode)
    ours = resample.resize(image, size, filter)
    assert ours.mode == mode and ours.tobytes() == image.resize(size, filter).tobytes()


def test_a_kernel_that_disagrees_with_pillow_is_not_used(monkeypatch):
    real = resample._call

    def off_by_one(lib, image, size, filter):
        out = real(lib, image, size, filter)
        pixels = np.asarray(out).copy()
        pixels[0, 0, 0] ^= 1
        return Image.fromarray(pixels, "RGB")

    monkeypatch.setattr(resample, "_call", off_by_one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = resample._kernel()
    if native.load("resample", ("-ffp-contract=off",)) is None:
        pytest.skip("no kernel to check")
    assert lib is None and any("differs from Pillow" in str(w.message) for w in caught)
    image = random_image(np.random.default_rng(4), 90, 70)
    expected = image.resize((30, 20), Image.Resampling.BICUBIC).tobytes()
    assert resample.resize(image, (30, 20), Image.Resampling.BICUBIC).tobytes() == expected


def test_without_native_kernels_pillow_resizes(monkeypatch):
    monkeypatch.setenv("CLIPBENCH_NATIVE", "0")
    native.load.cache_clear()
    try:
        assert resample._kernel() is None
        image = random_image(np.random.default_rng(5), 90, 70)
        expected = image.resize((30, 20), Image.Resampling.BILINEAR).tobytes()
        assert resample.resize(image, (30, 20), Image.Resampling.BILINEAR).tobytes() == expected
    finally:
        native.load.cache_clear()


@pytest.mark.parametrize("source", [(1280, 1280), (640, 427), (427, 640), (225, 224), (100, 90)])
def test_geometric_steps_equal_torchvisions_compose(source):
    from torchvision import transforms

    steps = [
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
    ]
    image = random_image(np.random.default_rng(sum(source)), *source)
    ours = resample.GeometricSteps(steps)(image)
    assert ours.tobytes() == transforms.Compose(steps)(image).tobytes()
    bilinear = [transforms.Resize((256, 200)), transforms.CenterCrop(199)]
    assert (
        resample.GeometricSteps(bilinear)(image).tobytes()
        == transforms.Compose(bilinear)(image).tobytes()
    )


DESCRIBABLE = [
    lambda t: [t.Resize(224, interpolation=t.InterpolationMode.BICUBIC), t.CenterCrop(224)],
    lambda t: [t.Resize([256]), t.CenterCrop([224])],  # the ResNet baseline's, bilinear
    lambda t: [t.Resize((50, 90)), t.CenterCrop((40, 81))],
    lambda t: [t.Resize(60, max_size=100), t.CenterCrop(64)],  # max_size; a crop that pads
    lambda t: [t.CenterCrop(33), t.Resize(31, interpolation=t.InterpolationMode.BICUBIC)],
]


@pytest.mark.parametrize("steps", DESCRIBABLE)
@pytest.mark.parametrize("source", [(1280, 1280), (640, 427), (427, 640), (225, 224), (37, 300)])
def test_described_steps_are_torchvisions_bit_for_bit(steps, source):
    import json

    from torchvision import transforms

    made = steps(transforms)
    described = resample.GeometricSteps(made).describe()
    assert described is not None
    replayed = resample.DescribedSteps(json.loads(json.dumps(described)))  # as cached
    image = random_image(np.random.default_rng(sum(source)), *source)
    want = transforms.Compose(made)(image)
    got = replayed(image)
    assert got.size == want.size and got.tobytes() == want.tobytes()


def test_steps_torchvision_alone_knows_are_not_described():
    from torchvision import transforms

    nearest = transforms.Resize(10, interpolation=transforms.InterpolationMode.NEAREST)
    for steps in ([nearest], [transforms.CenterCrop(8), transforms.Pad(2)]):
        assert resample.GeometricSteps(steps).describe() is None
