"""Batched encoding of images and captions with one loaded encoder, at a precision policy
(:mod:`clipbench.precision`); the stages that call it live in :mod:`clipbench.stages`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from clipbench.batching import prepared_batches
from clipbench.embeddings import l2_normalize
from clipbench.encoders import Encoder
from clipbench.images import decode_image
from clipbench.kinds.base import ModelSpec
from clipbench.logs import Progress, phase
from clipbench.pixels import StoredPixels
from clipbench.precision import Precision, resolve_precision
from clipbench.ridge import CrossFitRidge


def policy_for(encoder: Encoder, precision: Precision | str) -> Precision:
    if isinstance(precision, Precision):
        return precision
    return resolve_precision(precision, encoder.device)


def _run_batches(
    model: Callable[[Any], torch.Tensor],
    items: Sequence,
    batch_size: int,
    policy: Precision,
    desc: str,
    progress: Progress | None,
    prepare: Callable[[Sequence], Any] = list,
    workers: int = 0,
) -> np.ndarray:
    out = []
    with policy.context(), phase(progress, desc, len(items)) as advance:
        for n, batch in prepared_batches(items, batch_size, prepare, workers):
            out.append(model(batch).float().cpu().numpy())
            advance(n)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_images(
    encoder: Encoder,
    blobs: Sequence[bytes],
    ids: Sequence[int],
    batch_size: int,
    precision: Precision | str = "fp32",
    progress: Progress | None = None,
    perturb: Callable | None = None,
    workers: int = 0,
    stored: StoredPixels | None = None,
) -> np.ndarray:
    """Image features (unnormalised), one row per blob, in input order.

    ``perturb(image, row_id)`` optionally alters each decoded RGB image before preprocessing;
    ``workers`` threads decode and preprocess ahead of the model. With ``stored`` pixels (this
    encoder's geometry, already applied to these rows) only the cheap tensor step is left.
    """
    device, policy = encoder.device, policy_for(encoder, precision)
    encoder.set_precision(policy)
    if stored is not None and (perturb is not None or not stored.usable_by(encoder, ids)):
        raise ValueError("stored pixels were made for another geometry or other rows")

    def tensor(row: int, blob: bytes, row_id: int) -> torch.Tensor:
        if stored is not None:
            return encoder.finish(stored.image(row))
        image = decode_image(blob, row_id)
        if perturb is not None:
            image = perturb(image, row_id)
        return encoder.preprocess(image)

    def prepare(chunk) -> torch.Tensor:
        pixels = None
        if stored is not None:  # rows in order: the whole batch in one vectorised step
            pixels = encoder.finish_batch(stored.rows(chunk[0][0], chunk[-1][0] + 1))
            if pixels is not None and not encoder.channels_last:
                pixels = pixels.contiguous()
        if pixels is None:
            pixels = torch.stack([tensor(*item) for item in chunk])
        # Page-locked memory lets the copy to the GPU run asynchronously.
        return pixels.pin_memory() if device.type == "cuda" else pixels

    return _run_batches(
        lambda pixels: encoder.encode_images(encoder.pixels_to_device(pixels)),
        list(zip(range(len(ids)), blobs, ids, strict=True)),
        batch_size,
        policy,
        "images",
        progress,
        prepare,
        workers,
    )


def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    precision: Precision | str = "fp32",
    progress: Progress | None = None,
) -> np.ndarray:
    """Text features (unnormalised), one row per text, in input order.

    Batches are formed from captions of similar length, so padding to each batch's longest
    caption (BERT) or truncating to it (CLIP) wastes little work.
    """
    policy = policy_for(encoder, precision)
    encoder.set_precision(policy)
    order = np.argsort([len(t) for t in texts], kind="stable")
    features = _run_batches(
        lambda chunk: encoder.encode_texts(list(chunk)),
        [texts[i] for i in order],
        batch_size,
        policy,
        "texts",
        progress,
    )
    out = np.empty_like(features)
    out[order] = features
    return out


def fit_text_head(
    spec: ModelSpec, caption_raw: np.ndarray, image_emb: np.ndarray, caption_image: np.ndarray
) -> CrossFitRidge | None:
    """The fitted baseline's ridge map from text features to (normalised) image embeddings;
    None for models whose text tower already ends in the shared space."""
    ridge = spec.fitted_head
    if ridge is None:
        return None
    return CrossFitRidge(**asdict(ridge)).fit(caption_raw, image_emb[caption_image], caption_image)


def caption_embeddings(head: CrossFitRidge | None, raw: np.ndarray) -> np.ndarray:
    """Dataset captions: through the cross-fitted map of each caption's own fold."""
    return l2_normalize(raw if head is None else head.transform(raw, np.arange(len(raw))))


def query_embeddings(head: CrossFitRidge | None, raw: np.ndarray) -> np.ndarray:
    """Free-text queries are no dataset row: the map fitted on all rows projects them."""
    return l2_normalize(raw if head is None else head.transform(raw))
