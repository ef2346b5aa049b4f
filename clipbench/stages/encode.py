"""The GPU-tagged `encode` stage: one loaded model encodes a dataset's images, its captions and
the free-text queries; the :class:`Session` it opens also serves the robustness stage."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from clipbench.allocator import keep_freed_memory
from clipbench.arrow_io import read_metadata, read_table, write_table
from clipbench.batching import batch_sizes
from clipbench.cpus import compute_threads, cpu_compute_slot
from clipbench.embeddings import embedding_table, l2_normalize
from clipbench.encode import (
    caption_embeddings,
    encode_images,
    encode_texts,
    fit_text_head,
    query_embeddings,
)
from clipbench.encoders import Encoder
from clipbench.kinds import load_encoder
from clipbench.kinds.base import ModelSpec
from clipbench.logs import Progress
from clipbench.pixels import StoredPixels, first_image_agrees
from clipbench.precision import (
    Precision,
    deviation_from,
    native_reduced,
    resolve_device,
    resolve_precision,
)
from clipbench.settings import ONE_ATTEMPT, EncodeSettings, RetrySettings

log = logging.getLogger("clipbench")
LIBRARIES = ("torch", "torchvision", "open_clip_torch", "transformers", "pillow", "numpy")
STRICT_SAMPLE = 8  # images encoded in strict float32 to measure each run's deviation


@contextlib.contextmanager
def timed(what: str, items: int) -> Iterator[None]:
    """Log how long a phase took and its throughput (the log is where users look first)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    log.info("%s: %d in %.1f s (%.1f/s)", what, items, seconds, items / max(seconds, 1e-9))


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


@dataclass
class Session:
    """A loaded encoder plus the dataset it encodes, shared by the encode and robustness
    stages."""

    encoder: Encoder
    policy: Precision
    batch_size: int
    text_batch_size: int
    images: pa.Table
    captions: pa.Table
    progress: Progress | None
    decode_workers: int = 0
    stored: StoredPixels | None = None

    @classmethod
    def open(
        cls,
        spec: ModelSpec,
        settings: EncodeSettings,
        dataset_path: str,
        captions_path: str,
        threads: int,
        progress: Progress | None,
        model_name: str,
        pixels_path: str | None = None,
        retry: RetrySettings = ONE_ATTEMPT,
    ) -> Session:
        threads = compute_threads(threads)
        torch.set_num_threads(threads)
        device = resolve_device(settings.device)
        policy = resolve_precision(settings.precision, device)  # an impossible pair fails here
        if device.type == "cpu" and policy.reduced and native_reduced(device) is None:
            # Asked for by name on a CPU without bf16 instructions (AVX2): torch emulates it.
            # Zen 3 EPYC, open_clip under bf16 autocast, batch 8: ViT-B-32 6.6x and RN50 22x
            # slower than float32. `auto` runs float32 here.
            log.warning(
                "this CPU has no native %s (no AVX-512 BF16 or AMX): it is emulated, and runs "
                "several times slower than fp32; precision auto would run fp32 here",
                policy.name,
            )
        if device.type == "cpu":
            keep_freed_memory()
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN pick its fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        log.info(
            "loading %s on %s: precision %s runs as %s, %d compute thread(s)",
            model_name,
            device,
            settings.precision,
            policy.describe(),
            threads,
        )
        encoder = load_encoder(spec, device, retry)
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
        first = (
            images.slice(0, 1).to_pylist()[0] if stored is not None and images.num_rows else None
        )
        if first and not first_image_agrees(encoder, stored, first["image"], first["id"]):
            log.warning(
                "%s: the shared pixels of row %s differ from the model's own preprocessing: "
                "decoding itself",
                model_name,
                first["id"],
            )
            stored = None
        image_batch, text_batch = batch_sizes(
            settings.batch_size,
            device.type,
            encoder.channels_last,
            encoder.image_tokens,
            policy.reduced,
        )
        return cls(
            encoder,
            policy,
            image_batch,
            text_batch,
            images,
            read_table(captions_path),
            progress,
            settings.decode_workers,
            stored,
        )

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def caption_image(self) -> np.ndarray:
        # Image ids are 0…n−1 in row order (dataset.canonical_tables), so an id is a row index.
        return self.captions["image_id"].to_numpy()

    def image_features(self, perturb: Callable | None = None):
        """Features of every image at the session's policy (``perturb``: see encode_images)."""
        return self._images(self.policy, perturb, None)

    def _images(self, policy: Precision, perturb: Callable | None, rows: int | None):
        """The first ``rows`` images (all for None); a sample is decoded, never read from the
        shared pixels."""
        n = self.images.num_rows if rows is None else min(rows, self.images.num_rows)
        return encode_images(
            self.encoder,
            self.images["image"].slice(0, n).to_pylist(),
            self.images["id"].slice(0, n).to_pylist(),
            self.batch_size,
            policy,
            self.progress if rows is None else None,
            perturb,
            self.decode_workers,
            None if perturb or rows is not None else self.stored,
        )

    def strict_sample(self) -> np.ndarray | None:
        """Strict float32 embeddings of the first images, to measure how far this run's
        precision strays (None when the run is strict float32 itself). Decoded here, not read
        from the shared pixels: a check of the whole path. Taken before a one-way weight cast."""
        if self.policy.strict:
            return None
        strict = resolve_precision("fp32-strict", self.device)
        return l2_normalize(self._images(strict, None, STRICT_SAMPLE))

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.encoder, texts, self.text_batch_size, self.policy, self.progress)


def run_encode(
    dataset_path: str,
    captions_path: str,
    model_name: str,
    spec: ModelSpec,
    settings: EncodeSettings,
    queries: Sequence[str],
    out_images: str,
    out_texts: str,
    out_queries: str,
    threads: int,
    progress: Progress | None = None,
    pixels_path: str | None = None,
    retry: RetrySettings = ONE_ATTEMPT,
) -> None:
    """Encode both towers (and the configured free-text queries) with one loaded model;
    ``pixels_path``: the dataset's images already decoded by this model's geometry;
    ``retry``: config `download`, for the model's hub files."""
    session = Session.open(
        spec,
        settings,
        dataset_path,
        captions_path,
        threads,
        progress,
        model_name,
        pixels_path,
        retry,
    )
    with cpu_compute_slot(session.device.type):
        with timed("strict float32 sample", STRICT_SAMPLE):
            strict = session.strict_sample()
        with timed("images", session.images.num_rows):
            images = l2_normalize(session.image_features())
        with timed("captions", session.captions.num_rows):
            caption_raw = session.text_features(session.captions["text"].to_pylist())
        query_raw = session.text_features(list(queries))
    deviation = deviation_from(strict, images)
    head = fit_text_head(spec, caption_raw, images, session.caption_image)
    texts = caption_embeddings(head, caption_raw)
    query_emb = query_embeddings(head, query_raw)
    device = session.device
    metadata = {
        "model": model_name,
        "spec": spec.entry(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": session.policy.name,
        "precision_policy": session.policy.describe(session.encoder.fused),
        "batch_size": {"images": session.batch_size, "texts": session.text_batch_size},
        "dim": int(images.shape[1]),
        "dataset": read_metadata(dataset_path).get("dataset"),
        "libraries": library_versions(),
        "text_head": head.describe() if head else None,
        "deviation_from_strict_fp32": deviation,
        "fast_paths": session.encoder.fused,
        "image_geometry": session.encoder.geometry_key,
        "resolved_revision": session.encoder.resolved_revision,
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
