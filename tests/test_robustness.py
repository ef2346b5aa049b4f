import numpy as np
from PIL import Image

from clipbench.robustness import add_pixel_noise, add_typos


def test_pixel_noise_is_seeded_per_item_and_scales_with_sigma():
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    a = np.asarray(add_pixel_noise(image, 0.1, 0, 5), float)
    assert np.array_equal(a, np.asarray(add_pixel_noise(image, 0.1, 0, 5), float))
    assert not np.array_equal(a, np.asarray(add_pixel_noise(image, 0.1, 0, 6), float))
    assert abs(a.std() / 255 - 0.1) < 0.01
    small = np.asarray(add_pixel_noise(image, 0.02, 0, 5), float)
    assert small.std() < a.std() / 3
    assert np.array_equal(np.asarray(add_pixel_noise(image, 0.0, 0, 5)), np.asarray(image))


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_typos_are_seeded_and_follow_the_rate():
    text = "a small yellow cat flying in the sky above the red ball " * 4
    assert add_typos(text, 0.0, 0, 1) == text
    once = add_typos(text, 0.1, 0, 1)
    assert once == add_typos(text, 0.1, 0, 1) != text
    assert add_typos(text, 0.1, 0, 2) != once
    # About one edit per 1/rate characters (a swap counts as two).
    assert 0.05 * len(text) < edit_distance(once, text) < 0.2 * len(text)
    assert edit_distance(add_typos(text, 0.3, 0, 1), text) > 2 * edit_distance(once, text)
    assert add_typos("a", 1.0, 0, 3)  # never empty
