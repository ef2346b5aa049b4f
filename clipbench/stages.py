"""The workflow's light stages (no torch): read input artifacts, call the pure logic, write
Arrow. Each takes plain paths and values, so it runs the same under Snakemake, from a test or
from a notebook. The encode stage lives in :mod:`clipbench.encode`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clipbench.arrow_io import (
    embedding_array,
    embedding_matrix,
    read_metadata,
    read_table,
    write_table,
)
from clipbench.dataset import load_dataset
from clipbench.histogram import histogram_table, kde_table
from clipbench.retrieval import iter_retrieval, retrieval_metrics, topk

log = logging.getLogger("clipbench")


def download(dataset_cfg: dict[str, Any], name: str, out_path: str) -> None:
    table, metadata = load_dataset(dataset_cfg)
    log.info(
        "dataset %s: %d rows from %s (sha256 %s)",
        name,
        table.num_rows,
        metadata["source"],
        metadata["sha256"],
    )
    write_table(table, out_path, {"dataset": name, **metadata})


def load_pair(images_path: str, texts_path: str):
    images, texts = read_table(images_path), read_table(texts_path)
    image_ids = images["id"].to_numpy()
    position = {int(i): p for p, i in enumerate(image_ids)}
    positive = np.array([position[int(i)] for i in texts["image_id"].to_pylist()], np.int64)
    return images, texts, image_ids, positive, read_metadata(texts_path)


def similarity(images_path: str, texts_path: str, out_path: str) -> None:
    """The caption × image cosine matrix, one row per caption, columns in image-id order."""
    images, texts, image_ids, _, meta = load_pair(images_path, texts_path)
    scores = embedding_matrix(texts["embedding"]) @ embedding_matrix(images["embedding"]).T
    table = pa.table(
        {"text_id": texts["id"], "image_id": texts["image_id"], "scores": embedding_array(scores)}
    )
    write_table(
        table,
        out_path,
        {"model": meta["model"], "dataset": meta["dataset"], "image_ids": image_ids.tolist()},
    )


def hits(
    images_path: str,
    texts_path: str,
    k: int,
    recall_at: Sequence[int],
    out_hits: str,
    out_metrics: str,
    block_rows: int = 1024,
) -> None:
    """Per-caption rank and top-K of its own image, plus the one-row metrics summary."""
    images, texts, image_ids, positive, meta = load_pair(images_path, texts_path)
    blocks = list(
        iter_retrieval(
            embedding_matrix(texts["embedding"]),
            embedding_matrix(images["embedding"]),
            positive,
            k,
            block_rows,
        )
    )
    rank = np.concatenate([b.rank for b in blocks])
    topk_index = np.concatenate([b.topk_index for b in blocks])
    table = pa.table(
        {
            "text_id": texts["id"],
            "image_id": texts["image_id"],
            "rank": pa.array(rank, pa.int64()),
            "score": pa.array(np.concatenate([b.positive_score for b in blocks]), pa.float32()),
            "hit": pa.array(rank <= k),
            "topk_image_ids": pa.FixedSizeListArray.from_arrays(
                pa.array(image_ids[topk_index].reshape(-1), pa.int64()), k
            ),
            "topk_scores": embedding_array(np.concatenate([b.topk_score for b in blocks])),
        }
    )
    provenance = {
        "model": meta["model"],
        "dataset": meta["dataset"],
        "k": k,
        "tie_rule": "pessimistic: rank = 1 + #(other images with score >= own)",
    }
    write_table(table, out_hits, provenance)
    metrics = retrieval_metrics(rank, k, recall_at)
    write_table(
        pa.table({"model": [meta["model"]], **{m: [v] for m, v in metrics.items()}}),
        out_metrics,
        provenance,
    )
    log.info("%s: hits@%d = %d of %d", meta["model"], k, metrics["hits_at_k"], metrics["n"])


def histogram(hits_path: str, bins: int, lo: float, hi: float, out_hist: str, out_kde: str) -> None:
    """Matched-pair (caption, own image) similarity distribution for one model."""
    table = read_table(hits_path)
    meta = read_metadata(hits_path)
    scores = table["score"].to_numpy()
    provenance = {"model": meta["model"], "dataset": meta["dataset"], "n": int(scores.size)}
    write_table(histogram_table(scores, bins, lo, hi), out_hist, provenance)
    write_table(kde_table(scores), out_kde, provenance)


def queries(images_path: str, queries_path: str, dataset_path: str, k: int, out_path: str) -> None:
    """Top-K images for each free-text query, with the retrieved images' captions."""
    images, query_table = read_table(images_path), read_table(queries_path)
    scores = embedding_matrix(query_table["embedding"]) @ embedding_matrix(images["embedding"]).T
    idx = topk(scores, k)
    image_ids = images["id"].to_numpy()[idx]
    captions = dict(
        zip(*(read_table(dataset_path).select(["id", "text"]).to_pydict().values()), strict=True)
    )
    n_queries = len(query_table)
    table = pa.table(
        {
            "query_id": np.repeat(query_table["id"].to_numpy(), k),
            "query": np.repeat(np.array(query_table["query"].to_pylist(), dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1), n_queries),
            "image_id": image_ids.reshape(-1),
            "score": np.take_along_axis(scores, idx, axis=1).reshape(-1).astype(np.float32),
            "caption": [captions[int(i)] for i in image_ids.reshape(-1)],
        }
    )
    meta = read_metadata(queries_path)
    write_table(table, out_path, {"model": meta["model"], "dataset": meta["dataset"], "k": k})
