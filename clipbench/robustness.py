"""Seeded perturbations for the robustness curves: Gaussian pixel noise on images and
character-level typos in captions. Each item's randomness is keyed by (seed, item id), so every
model sees exactly the same perturbed inputs, whatever order or batch they come in."""

from __future__ import annotations

import string

import numpy as np
from PIL import Image

LETTERS = string.ascii_lowercase


def add_pixel_noise(image: Image.Image, sigma: float, seed: int, item: int) -> Image.Image:
    """Add N(0, σ²) noise to every channel, σ in units of the full intensity range [0, 1]."""
    rng = np.random.default_rng([seed, item])
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8), "RGB")


def add_typos(text: str, rate: float, seed: int, item: int) -> str:
    """Each character independently, with probability ``rate``, is deleted, replaced by a
    random letter, gets a random letter inserted after it, or is swapped with the next."""
    rng = np.random.default_rng([seed, item])
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if rng.random() >= rate:
            out.append(c)
        else:
            edit = rng.integers(4)
            if edit == 1:
                out.append(LETTERS[rng.integers(26)])
            elif edit == 2:
                out += [c, LETTERS[rng.integers(26)]]
            elif edit == 3 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 1
            elif edit == 3:
                out.append(c)
            # edit 0: deletion
        i += 1
    # A caption must stay non-empty for the text tower.
    return "".join(out) or text[:1]
