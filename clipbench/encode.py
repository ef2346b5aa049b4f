"""Batched, inference-mode encoding of a dataset's images and captions with one encoder."""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from clipbench.arrow_io import embedding_array
from clipbench.encoders import Encoder
from clipbench.errors import InputError
from clipbench.images import decode_image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LIBRARIES = ("torch", "torchvision", "open_clip_torch", "transformers", "pillow", "numpy")


def resolve_device(requested: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available; use auto")
    return device


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=DTYPES[precision])


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_batches(
    fn: Callable[[Sequence], torch.Tensor],
    items: Sequence,
    batch_size: int,
    device: torch.device,
    precision: str,
    desc: str,
    progress: IO[str] | None,
) -> np.ndarray:
    out = []
    with (
        torch.inference_mode(),
        precision_context(device, precision),
        tqdm(total=len(items), desc=desc, unit="item", file=progress, disable=progress is None,
             mininterval=2.0) as bar,
    ):
        for chunk in batches(items, batch_size):
            features = fn(chunk).float()
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
            bar.update(len(chunk))
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_images(
    encoder: Encoder,
    blobs: Sequence[bytes],
    ids: Sequence[int],
    batch_size: int,
    precision: str = "fp32",
    progress: IO[str] | None = None,
) -> np.ndarray:
    """L2-normalised image embeddings, one row per blob, in input order."""
    device = encoder.device

    def run(chunk):
        pixels = torch.stack([encoder.preprocess(decode_image(b, i)) for b, i in chunk])
        return encoder.encode_images(pixels.to(device))

    return _run_batches(run, list(zip(blobs, ids, strict=True)), batch_size, device, precision,
                        "images", progress)


def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    precision: str = "fp32",
    progress: IO[str] | None = None,
) -> np.ndarray:
    """L2-normalised caption embeddings, one row per text, in input order."""
    return _run_batches(lambda chunk: encoder.encode_texts(list(chunk)), list(texts), batch_size,
                        encoder.device, precision, "texts", progress)


def embedding_table(ids: Sequence[int], matrix: np.ndarray, **columns: Any) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), **columns,
                     "embedding": embedding_array(matrix)})
