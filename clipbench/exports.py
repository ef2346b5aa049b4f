"""Results in the shapes other tools read: CLIP_benchmark's per-run JSON (its `build` command
and the leaderboards built on it read these) and one tidy table of every dataset × model ×
direction × metric (CSV and Parquet: a paper table is one ``polars.read_csv`` away)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipbench.arrow_io import atomic_path, read_metadata, read_table
from clipbench.kinds import parse_model

TASK = "zeroshot_retrieval"
# CLIP_benchmark names a direction by what is retrieved: images for captions, and back.
PEER_DIRECTIONS = {"text_to_image": "image_retrieval", "image_to_text": "text_retrieval"}
TIDY_COLUMNS = (
    "dataset",
    "model",
    "direction",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "level",
    "chance",
    "n_queries",
    "n_candidates",
    "k",
    "ties",
    "queries_with_ties",
)


def peer_metric(direction: str, metric: str, k: int) -> str:
    """Our metric as CLIP_benchmark's key: ``recall_at_5`` text→image is
    ``image_retrieval_recall@5``; metrics it lacks keep our name (``hits_at_k`` as hits@K)."""
    name = metric.replace("recall_at_", "recall@").replace("hits_at_k", f"hits@{k}")
    return f"{PEER_DIRECTIONS[direction]}_{name}"


def clip_benchmark_result(metrics_path: str, embeddings_path: str) -> dict[str, Any]:
    """One model on one dataset as CLIP_benchmark's ``eval`` writes it (dataset, model,
    pretrained, task, metrics), its recall keys first; every other metric, the interval bounds
    and the chance levels follow under their own keys, and our provenance under
    ``clipbench``."""
    table, meta = read_table(metrics_path), read_metadata(metrics_path)
    encoded = read_metadata(embeddings_path)
    spec = parse_model(encoded["spec"])
    model, pretrained = spec.clip_benchmark_names()
    rows = table.to_pylist()
    k = meta["k"]
    recall = [r for r in rows if r["metric"].startswith("recall_at_")]
    values = {peer_metric(r["direction"], r["metric"], k): r["value"] for r in recall}
    for row in rows:
        key = peer_metric(row["direction"], row["metric"], k)
        values.setdefault(key, row["value"])
        values |= {f"{key}_{bound}": row[bound] for bound in ("ci_low", "ci_high", "chance")}
    queries = {PEER_DIRECTIONS[r["direction"]]: r["n_queries"] for r in rows}
    return {
        "dataset": meta["dataset"],
        "model": model,
        "pretrained": pretrained,
        "task": TASK,
        "metrics": values,
        "clipbench": {
            "model": meta["model"],
            "spec": encoded["spec"],
            "precision": encoded.get("precision_policy"),
            "device": encoded.get("device_name"),
            "resolved_revision": encoded.get("resolved_revision"),
            "k": k,
            "ties": meta["ties"],
            "bootstrap": meta["bootstrap"],
            "n_queries": queries,
        },
    }


def write_clip_benchmark(metrics_path: str, embeddings_path: str, out_path: str) -> None:
    result = clip_benchmark_result(metrics_path, embeddings_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def tidy_metrics(metrics_paths: Sequence[str]) -> pa.Table:
    """Every metrics artifact's rows, with their dataset, K and interval level as columns."""
    tables = []
    for path in metrics_paths:
        table, meta = read_table(path), read_metadata(path)
        for name, value, kind in (
            ("dataset", meta["dataset"], pa.string()),
            ("level", meta["bootstrap"]["level"], pa.float64()),
            ("k", meta["k"], pa.int64()),
        ):
            table = table.append_column(name, pa.array([value] * table.num_rows, kind))
        tables.append(table.select(TIDY_COLUMNS))
    return pa.concat_tables(tables)


def write_tidy(metrics_paths: Sequence[str], out_csv: str, out_parquet: str) -> None:
    table = tidy_metrics(metrics_paths)
    with atomic_path(out_csv) as tmp:
        pacsv.write_csv(table, tmp)
    with atomic_path(out_parquet) as tmp:
        pq.write_table(table, tmp)


def write_clip_retrieval(
    images_path: str,
    texts_path: str,
    captions_path: str,
    out_img: str,
    out_text: str,
    out_meta: str,
) -> None:
    """One model's embeddings in clip-retrieval's layout (``img_emb/img_emb_0.npy``,
    ``text_emb/text_emb_0.npy`` as float16, ``metadata/metadata_0.parquet``), so that its
    ``index`` and ``back`` commands and faiss read them. clip-retrieval's rows are image–caption
    pairs, one row in each file: an image with several captions has one row per caption."""
    import numpy as np

    from clipbench.arrow_io import embedding_matrix

    images, texts = read_table(images_path), read_table(texts_path)
    captions = read_table(captions_path)
    image_emb = embedding_matrix(images["embedding"])
    text_emb = embedding_matrix(texts["embedding"])
    image_id = texts["image_id"].to_numpy()  # image ids are row indices (0…n−1)
    text_by_id = dict(zip(captions["id"].to_pylist(), captions["text"].to_pylist(), strict=True))
    metadata = pa.table(
        {
            "image_id": texts["image_id"],
            "text_id": texts["id"],
            "caption": pa.array([text_by_id[i] for i in texts["id"].to_pylist()], pa.string()),
        }
    )
    for path, matrix in ((out_img, image_emb[image_id]), (out_text, text_emb)):
        with atomic_path(path) as tmp, open(tmp, "wb") as sink:
            np.save(sink, matrix.astype(np.float16))
    with atomic_path(out_meta) as tmp:
        pq.write_table(metadata, tmp)
