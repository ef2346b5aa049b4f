"""Batched, inference-mode encoding of a dataset's images and captions with one encoder."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from clipbench.arrow_io import embedding_array, read_metadata, read_table, write_table
from clipbench.encoders import Encoder, load_encoder
from clipbench.errors import InputError
from clipbench.images import decode_image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("clipbench")
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
        tqdm(
            total=len(items),
            desc=desc,
            unit="item",
            file=progress,
            disable=progress is None,
            mininterval=2.0,
        ) as bar,
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

    return _run_batches(
        run, list(zip(blobs, ids, strict=True)), batch_size, device, precision, "images", progress
    )


def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    precision: str = "fp32",
    progress: IO[str] | None = None,
) -> np.ndarray:
    """L2-normalised caption embeddings, one row per text, in input order."""
    return _run_batches(
        lambda chunk: encoder.encode_texts(list(chunk)),
        list(texts),
        batch_size,
        encoder.device,
        precision,
        "texts",
        progress,
    )


def embedding_table(ids: Sequence[int], matrix: np.ndarray, **columns: Any) -> pa.Table:
    return pa.table(
        {"id": pa.array(ids, pa.int64()), **columns, "embedding": embedding_array(matrix)}
    )


def run_encode(
    dataset_path: str,
    model_name: str,
    spec: dict[str, Any],
    settings: dict[str, Any],
    queries: Sequence[str],
    out_images: str,
    out_texts: str,
    out_queries: str,
    threads: int,
    progress: IO[str] | None = None,
) -> None:
    """Encode both towers (and the configured free-text queries) with one loaded model."""
    torch.set_num_threads(threads)
    device = resolve_device(settings["device"])
    precision, batch_size = settings["precision"], settings["batch_size"]
    precision_context(device, precision)  # fail fast on an impossible combination
    data = read_table(dataset_path)
    log.info("loading %s on %s (%s)", model_name, device, precision)
    encoder = load_encoder(spec, device)
    ids = data["id"].to_pylist()
    images = encode_images(encoder, data["image"].to_pylist(), ids, batch_size, precision, progress)
    texts = encode_texts(encoder, data["text"].to_pylist(), batch_size, precision, progress)
    query_emb = encode_texts(encoder, list(queries), batch_size, precision, progress)
    metadata = {
        "model": model_name,
        "spec": spec,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "batch_size": batch_size,
        "dim": int(images.shape[1]),
        "dataset": read_metadata(dataset_path).get("dataset"),
        "libraries": library_versions(),
    }
    write_table(embedding_table(ids, images), out_images, metadata)
    # One caption per image here: a caption's own image carries the caption's row id.
    write_table(
        embedding_table(ids, texts, image_id=pa.array(ids, pa.int64())), out_texts, metadata
    )
    write_table(
        embedding_table(range(len(queries)), query_emb, query=pa.array(queries, pa.string())),
        out_queries,
        metadata,
    )
