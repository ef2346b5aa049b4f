"""Batched, inference-mode encoding of a dataset's images and captions with one encoder, and
the two GPU-tagged stages built on it: ``encode`` and ``robustness``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from clipbench.arrow_io import (
    embedding_matrix,
    read_metadata,
    read_table,
    write_table,
)
from clipbench.embeddings import embedding_table, l2_normalize
from clipbench.encoders import Encoder, load_encoder
from clipbench.errors import InputError
from clipbench.images import decode_image
from clipbench.metrics import summarize
from clipbench.pixels import StoredPixels
from clipbench.retrieval import retrieve_both
from clipbench.ridge import CrossFitRidge
from clipbench.robustness import add_pixel_noise, add_typos

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


@contextlib.contextmanager
def matmul_precision(level: str) -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """How a precision setting runs on a device.

    fp32: on CPU, float32 matmuls through oneDNN's fast path (``matmul precision "medium"``,
    about twice the strict throughput on AVX-512 BF16 machines at an error of ~1e-6, measured
    per run against fp32-strict); on CUDA, strict float32 (no TF32). fp32-strict: strict
    float32 everywhere. bf16 / fp16: autocast (fp16 on CUDA only).
    """
    if precision == "fp16" and device.type == "cpu":
        raise InputError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "fp32-strict" or (precision == "fp32" and device.type != "cpu"):
        return matmul_precision("highest")
    if precision == "fp32":
        return matmul_precision("medium")
    if precision == "bf16" and device.type == "cpu":
        return contextlib.nullcontext()  # the weights are cast instead (Encoder.set_precision)
    return torch.autocast(device.type, dtype=DTYPES[precision])


# batch_size "auto": measured on a 2-core AVX-512 CPU (fp32, 224²), CNN towers peak at
# batch 8 (RN50 12.8 img/s vs 10.6 at 32; resnet50 19.4 vs 14.8), ViTs at 16–32 (flat);
# GPUs want large batches.
AUTO_BATCH = {
    "cpu": {"convolutional": 8, "other": 32},
    "cuda": {"convolutional": 128, "other": 128},
}


def batch_sizes(setting: int | str, encoder: Encoder) -> tuple[int, int]:
    """(image, text) batch sizes: the configured one for both, or for ``auto`` the best
    measured per tower type (text towers count as "other")."""
    if setting != "auto":
        return int(setting), int(setting)
    sizes = AUTO_BATCH["cuda" if encoder.device.type == "cuda" else "cpu"]
    return sizes["convolutional" if encoder.channels_last else "other"], sizes["other"]


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def prepared_batches(
    items: Sequence, batch_size: int, prepare: Callable[[Sequence], Any], workers: int
) -> Iterator[tuple[int, Any]]:
    """(batch length, prepare(batch)) in order. With ``workers`` > 0, threads prepare the next
    batches (image decoding releases the GIL) while the caller runs the model on this one; at
    most ``workers + 1`` batches are in flight, so memory stays bounded."""
    chunks = list(batches(items, batch_size))
    if workers == 0:
        for chunk in chunks:
            yield len(chunk), prepare(chunk)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(prepare, c) for c in chunks[: workers + 1])
        for i, chunk in enumerate(chunks):
            result = pending.popleft().result()
            if i + workers + 1 < len(chunks):
                pending.append(pool.submit(prepare, chunks[i + workers + 1]))
            yield len(chunk), result


def _run_batches(
    model: Callable[[Any], torch.Tensor],
    items: Sequence,
    batch_size: int,
    device: torch.device,
    precision: str,
    desc: str,
    progress: IO[str] | None,
    prepare: Callable[[Sequence], Any] = list,
    workers: int = 0,
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
        for n, batch in prepared_batches(items, batch_size, prepare, workers):
            out.append(model(batch).float().cpu().numpy())
            bar.update(n)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_images(
    encoder: Encoder,
    blobs: Sequence[bytes],
    ids: Sequence[int],
    batch_size: int,
    precision: str = "fp32",
    progress: IO[str] | None = None,
    perturb: Callable | None = None,
    workers: int = 0,
    stored: StoredPixels | None = None,
) -> np.ndarray:
    """Image features (unnormalised), one row per blob, in input order.

    ``perturb(image, row_id)`` optionally alters each decoded RGB image before preprocessing;
    ``workers`` threads decode and preprocess ahead of the model. With ``stored`` pixels (this
    encoder's geometry, already applied to these rows) only the cheap tensor step is left.
    """
    device = encoder.device
    encoder.set_precision(precision)
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
        pixels = torch.stack([tensor(*item) for item in chunk])
        # Page-locked memory lets the copy to the GPU run asynchronously.
        return pixels.pin_memory() if device.type == "cuda" else pixels

    return _run_batches(
        lambda pixels: encoder.encode_images(encoder.pixels_to_device(pixels)),
        list(zip(range(len(ids)), blobs, ids, strict=True)),
        batch_size,
        device,
        precision,
        "images",
        progress,
        prepare,
        workers,
    )


def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    precision: str = "fp32",
    progress: IO[str] | None = None,
) -> np.ndarray:
    """Text features (unnormalised), one row per text, in input order.

    Batches are formed from captions of similar length, so padding to each batch's longest
    caption (BERT) or truncating to it (CLIP) wastes little work.
    """
    encoder.set_precision(precision)
    order = np.argsort([len(t) for t in texts], kind="stable")
    features = _run_batches(
        lambda chunk: encoder.encode_texts(list(chunk)),
        [texts[i] for i in order],
        batch_size,
        encoder.device,
        precision,
        "texts",
        progress,
    )
    out = np.empty_like(features)
    out[order] = features
    return out


def fit_text_head(
    spec: dict[str, Any], caption_raw: np.ndarray, image_emb: np.ndarray, caption_image: np.ndarray
) -> CrossFitRidge | None:
    """The fitted baseline's ridge map from text features to (normalised) image embeddings;
    None for models whose text tower already ends in the shared space."""
    if spec.get("projection") != "ridge":
        return None
    return CrossFitRidge(**spec["ridge"]).fit(caption_raw, image_emb[caption_image], caption_image)


def caption_embeddings(head: CrossFitRidge | None, raw: np.ndarray) -> np.ndarray:
    """Dataset captions: through the cross-fitted map of each caption's own fold."""
    return l2_normalize(raw if head is None else head.transform(raw, np.arange(len(raw))))


def query_embeddings(head: CrossFitRidge | None, raw: np.ndarray) -> np.ndarray:
    """Free-text queries are no dataset row: the map fitted on all rows projects them."""
    return l2_normalize(raw if head is None else head.transform(raw))


def deviation_from(strict: np.ndarray | None, embeddings: np.ndarray) -> dict | None:
    """Largest cosine distance between embeddings and their strict float32 counterparts."""
    if strict is None:
        return None
    distance = 1.0 - np.sum(strict * embeddings[: len(strict)], axis=1)
    return {"max_cosine_distance": float(distance.max()), "sample": len(strict)}


@dataclass
class Session:
    """A loaded encoder plus the dataset it encodes, shared by the encode and robustness
    stages."""

    encoder: Encoder
    device: torch.device
    precision: str
    batch_size: int
    images: pa.Table
    captions: pa.Table
    progress: IO[str] | None
    decode_workers: int = 0
    stored: StoredPixels | None = None
    text_batch_size: int = 32

    @classmethod
    def open(
        cls,
        spec,
        settings,
        dataset_path,
        captions_path,
        threads,
        progress,
        model_name,
        pixels_path=None,
    ):
        torch.set_num_threads(threads)
        device = resolve_device(settings["device"])
        precision_context(device, settings["precision"])  # fail fast on an impossible combo
        log.info("loading %s on %s (%s)", model_name, device, settings["precision"])
        encoder = load_encoder(spec, device, settings.get("download"))
        images = read_table(dataset_path)
        stored = StoredPixels(pixels_path) if pixels_path else None
        if stored is not None and not stored.usable_by(encoder, images["id"].to_numpy()):
            log.warning(
                "%s: shared pixels were made with %r, this model needs %r: decoding itself",
                model_name,
                stored.geometry_key,
                encoder.geometry_key,
            )
            stored = None
        image_batch, text_batch = batch_sizes(settings["batch_size"], encoder)
        return cls(
            encoder,
            device,
            settings["precision"],
            image_batch,
            images,
            read_table(captions_path),
            progress,
            settings["decode_workers"],
            stored,
            text_batch,
        )

    @property
    def caption_image(self) -> np.ndarray:
        # Image ids are 0…n−1 in row order (dataset.canonical_tables), so an id is a row index.
        return self.captions["image_id"].to_numpy()

    def image_features(self, perturb: Callable | None = None) -> np.ndarray:
        return encode_images(
            self.encoder,
            self.images["image"].to_pylist(),
            self.images["id"].to_pylist(),
            self.batch_size,
            self.precision,
            self.progress,
            perturb,
            self.decode_workers,
            None if perturb else self.stored,
        )

    def strict_sample(self, sample: int = 16) -> np.ndarray | None:
        """Strict float32 embeddings of the first ``sample`` images, to measure how far this
        run's precision strays (None when the run is strict float32 itself)."""
        if self.precision == "fp32-strict":
            return None
        n = min(sample, self.images.num_rows)
        return l2_normalize(
            encode_images(
                self.encoder,
                self.images["image"].to_pylist()[:n],
                self.images["id"].to_pylist()[:n],
                self.batch_size,
                "fp32-strict",
            )  # decoded here: a check of the whole path, shared pixels included
        )

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(
            self.encoder, texts, self.text_batch_size, self.precision, self.progress
        )


def run_encode(
    dataset_path: str,
    captions_path: str,
    model_name: str,
    spec: dict[str, Any],
    settings: dict[str, Any],
    queries: Sequence[str],
    out_images: str,
    out_texts: str,
    out_queries: str,
    threads: int,
    progress: IO[str] | None = None,
    pixels_path: str | None = None,
) -> None:
    """Encode both towers (and the configured free-text queries) with one loaded model;
    ``pixels_path``: the dataset's images already decoded by this model's geometry."""
    session = Session.open(
        spec, settings, dataset_path, captions_path, threads, progress, model_name, pixels_path
    )
    strict = session.strict_sample()  # first: a bf16 cast of the weights is one-way
    images = l2_normalize(session.image_features())
    deviation = deviation_from(strict, images)
    caption_raw = session.text_features(session.captions["text"].to_pylist())
    head = fit_text_head(spec, caption_raw, images, session.caption_image)
    texts = caption_embeddings(head, caption_raw)
    query_emb = query_embeddings(head, session.text_features(list(queries)))
    device = session.device
    metadata = {
        "model": model_name,
        "spec": spec,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": session.precision,
        "batch_size": {"images": session.batch_size, "texts": session.text_batch_size},
        "dim": int(images.shape[1]),
        "dataset": read_metadata(dataset_path).get("dataset"),
        "libraries": library_versions(),
        "text_head": head.describe() if head else None,
        "deviation_from_strict_fp32": deviation,
        "image_geometry": session.encoder.geometry_key,
        "shared_pixels": session.stored is not None,
    }
    write_table(embedding_table(session.images["id"].to_pylist(), images), out_images, metadata)
    write_table(
        embedding_table(
            session.captions["id"].to_pylist(), texts, image_id=session.captions["image_id"]
        ),
        out_texts,
        metadata,
    )
    write_table(
        embedding_table(range(len(queries)), query_emb, query=pa.array(queries, pa.string())),
        out_queries,
        metadata,
    )


def recall_rows(text_emb, image_emb, caption_image, k, recall_at) -> list[tuple[str, str, float]]:
    """(direction, metric, value) for hits@K and R@k in both directions."""
    t2i, i2t = retrieve_both(text_emb, image_emb, caption_image, k)
    rows = []
    for direction, result in (("text_to_image", t2i), ("image_to_text", i2t)):
        summary = summarize(result.rank, k, recall_at)
        for name in ("hits_at_k", *(f"recall_at_{r}" for r in recall_at)):
            rows.append((direction, name, float(summary[name])))
    return rows


def run_robustness(
    dataset_path: str,
    captions_path: str,
    images_path: str,
    texts_path: str,
    model_name: str,
    spec: dict[str, Any],
    settings: dict[str, Any],
    robustness: dict[str, Any],
    k: int,
    recall_at: Sequence[int],
    out_path: str,
    threads: int,
    progress: IO[str] | None = None,
) -> None:
    """Retrieval as seeded Gaussian pixel noise is added to the images, and as seeded
    character-level typos are added to the captions (the other side stays clean)."""
    session = Session.open(
        spec, settings, dataset_path, captions_path, threads, progress, model_name
    )
    clean_images = embedding_matrix(read_table(images_path)["embedding"])
    clean_texts = embedding_matrix(read_table(texts_path)["embedding"])
    caption_image, seed = session.caption_image, robustness["seed"]
    rows: list[tuple] = []
    for sigma in robustness["noise_sigmas"]:
        images = (
            clean_images
            if sigma == 0
            else l2_normalize(
                session.image_features(
                    lambda image, row_id, s=sigma: add_pixel_noise(image, s, seed, row_id)
                )
            )
        )
        rows += [
            ("image_noise", float(sigma), *r)
            for r in recall_rows(clean_texts, images, caption_image, k, recall_at)
        ]
    head = None
    if spec.get("projection") == "ridge":  # refit exactly as encode did, on clean captions
        clean_raw = session.text_features(session.captions["text"].to_pylist())
        head = fit_text_head(spec, clean_raw, clean_images, caption_image)
    for rate in robustness["typo_rates"]:
        if rate == 0:
            texts = clean_texts
        else:
            noisy = [
                add_typos(t, rate, seed, int(i))
                for t, i in zip(
                    session.captions["text"].to_pylist(),
                    session.captions["id"].to_numpy(),
                    strict=True,
                )
            ]
            texts = caption_embeddings(head, session.text_features(noisy))
        rows += [
            ("caption_typos", float(rate), *r)
            for r in recall_rows(texts, clean_images, caption_image, k, recall_at)
        ]
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {
            name: list(col)
            for name, col in zip(
                ("perturbation", "level", "direction", "metric", "value"), columns, strict=True
            )
        }
    )
    write_table(
        table,
        out_path,
        {
            "model": model_name,
            "seed": seed,
            "k": k,
            "dataset": read_metadata(dataset_path).get("dataset"),
        },
    )
