"""The stages that score one model's embeddings: the similarity matrix, ranks and top-K with
metrics (`hits`), paired comparisons between models (`compare`) and free-text queries."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clipbench.arrow_io import (
    atomic_writer,
    embedding_array,
    embedding_matrix,
    read_metadata,
    read_table,
    write_table,
)
from clipbench.embeddings import Embeddings
from clipbench.metrics import (
    QueryRanks,
    bootstrap_intervals,
    chance_metrics,
    holm,
    metric_names,
    paired_bootstrap,
    summarize,
)
from clipbench.retrieval import TILE_SCORES, RetrievalResult, topk
from clipbench.settings import BootstrapSettings

log = logging.getLogger("clipbench")
DIRECTIONS = ("text_to_image", "image_to_text")


def compared_metrics(recall_at: Sequence[int]) -> list[str]:
    """The metrics whose paired differences the report shows and tests as one family."""
    return [*(f"recall_at_{r}" for r in recall_at), "mrr"]


def similarity(
    images_path: str, texts_path: str, out_path: str, max_rows: int, tile_scores: int = TILE_SCORES
) -> None:
    """The caption × image cosine matrix, one row per caption, columns in image-id order,
    streamed block by block. Above ``max_rows`` captions or images the matrix is not written
    (the file keeps its schema, zero rows, and says why): ranks and top-K are in ``hits``."""
    emb = Embeddings(images_path, texts_path)
    n_texts, n_images = emb.text_emb.shape[0], emb.image_emb.shape[0]
    omitted = max(n_texts, n_images) > max_rows
    schema = pa.schema(
        [
            ("text_id", pa.int64()),
            ("image_id", pa.int64()),
            ("scores", pa.list_(pa.float32(), n_images)),
        ]
    )
    metadata = {
        **emb.provenance,
        "image_ids": None if omitted else emb.images["id"].to_numpy().tolist(),
        "omitted": omitted,
        "max_rows": max_rows,
        "shape": [n_texts, n_images],
    }
    image_t = np.ascontiguousarray(emb.image_emb.T)
    with atomic_writer(out_path, schema, metadata) as writer:
        if omitted:
            log.info(
                "%d × %d exceeds max_rows = %d: matrix not written", n_texts, n_images, max_rows
            )
            return
        block_rows = max(1, tile_scores // max(1, n_images))
        for start in range(0, n_texts, block_rows):
            rows = slice(start, start + block_rows)
            writer.write_batch(
                pa.record_batch(
                    [
                        emb.texts["id"][rows].combine_chunks(),
                        emb.texts["image_id"][rows].combine_chunks(),
                        embedding_array(emb.text_emb[rows] @ image_t),
                    ],
                    schema=schema,
                )
            )


def _fixed_list(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), values.shape[1])


def per_query_table(
    result: RetrievalResult, k: int, candidate_ids: np.ndarray, candidate: str, **columns
) -> pa.Table:
    """Per-query results: the id columns given, then rank (tied non-positives counted above),
    the ties with the best positive, its score, whether the top-K list holds a positive, and
    the list."""
    return pa.table(
        {
            **columns,
            "rank": pa.array(result.rank, pa.int64()),
            "ties": pa.array(result.ties, pa.int64()),
            "tied_positives": pa.array(result.tied_positives, pa.int64()),
            "score": pa.array(result.positive_score, pa.float32()),
            "hit": pa.array(result.rank <= k),
            f"topk_{candidate}_ids": _fixed_list(candidate_ids[result.topk_index], pa.int64()),
            "topk_scores": _fixed_list(result.topk_score, pa.float32()),
        }
    )


def metrics_table(
    model: str,
    direction: str,
    placement: QueryRanks,
    n_candidates: int,
    n_positives: np.ndarray,
    k: int,
    recall_at: Sequence[int],
    bootstrap: BootstrapSettings,
    ties: str = "expected",
) -> pa.Table:
    """One row per metric: value, bootstrap interval, chance level, and how many queries had
    a non-positive tied with their best positive."""
    value = summarize(placement, k, recall_at, ties)
    ci = bootstrap_intervals(
        placement, k, recall_at, bootstrap.resamples, bootstrap.seed, bootstrap.level, ties
    )
    chance = chance_metrics(n_candidates, n_positives, k, recall_at)
    names = metric_names(recall_at)
    rows = len(names)
    return pa.table(
        {
            "model": [model] * rows,
            "direction": [direction] * rows,
            "metric": names,
            "value": [float(value[m]) for m in names],
            "ci_low": [ci[m][0] for m in names],
            "ci_high": [ci[m][1] for m in names],
            "chance": [chance[m] for m in names],
            "n_queries": [placement.size] * rows,
            "n_candidates": [n_candidates] * rows,
            "ties": [ties] * rows,
            "queries_with_ties": [int((placement.tied > 0).sum())] * rows,
        }
    )


def hits(
    images_path: str,
    texts_path: str,
    k: int,
    recall_at: Sequence[int],
    bootstrap: BootstrapSettings,
    out_t2i: str,
    out_i2t: str,
    out_metrics: str,
    tile_scores: int = TILE_SCORES,
    ties: str = "expected",
) -> None:
    """Per-query ranks and top-K in both directions, and the metrics with intervals; ``ties``:
    how the metrics count non-positives tied with a best positive (clipbench.metrics)."""
    emb = Embeddings(images_path, texts_path)
    n_images, n_texts = emb.image_emb.shape[0], emb.text_emb.shape[0]
    captions_per_image = np.bincount(emb.caption_image, minlength=n_images)
    t2i, i2t = emb.retrieve(k, tile_scores)
    provenance = {
        **emb.provenance,
        "k": k,
        "rank_rule": "rank = 1 + #(non-positives with score >= best positive)",
        "ties": ties,
    }
    write_table(
        per_query_table(
            t2i,
            k,
            emb.images["id"].to_numpy(),
            "image",
            text_id=emb.texts["id"],
            image_id=emb.texts["image_id"],
        ),
        out_t2i,
        provenance,
    )
    write_table(
        per_query_table(
            i2t,
            k,
            emb.texts["id"].to_numpy(),
            "text",
            image_id=emb.images["id"],
            n_captions=pa.array(captions_per_image, pa.int64()),
        ),
        out_i2t,
        provenance,
    )
    model = emb.meta["model"]
    tables = [
        metrics_table(
            model,
            "text_to_image",
            t2i.placement,
            n_images,
            np.ones(n_texts, np.int64),
            k,
            recall_at,
            bootstrap,
            ties,
        ),
        metrics_table(
            model,
            "image_to_text",
            i2t.placement,
            n_texts,
            captions_per_image,
            k,
            recall_at,
            bootstrap,
            ties,
        ),
    ]
    write_table(
        pa.concat_tables(tables), out_metrics, {**provenance, "bootstrap": bootstrap.as_dict()}
    )
    log.info("%s: text→image hits@%d = %d of %d", model, k, int((t2i.rank <= k).sum()), n_texts)


def compare(
    models: Sequence[str],
    t2i_paths: Sequence[str],
    i2t_paths: Sequence[str],
    k: int,
    recall_at: Sequence[int],
    bootstrap: BootstrapSettings,
    out_path: str,
    ties: str = "expected",
) -> None:
    """Paired bootstrap of every metric's difference between every pair of models."""
    ranks = {
        direction: {m: placement_of(p) for m, p in zip(models, paths, strict=True)}
        for direction, paths in zip(DIRECTIONS, (t2i_paths, i2t_paths), strict=True)
    }
    rows: list[dict[str, Any]] = []
    for direction in DIRECTIONS:
        for a, b in itertools.combinations(models, 2):
            result = paired_bootstrap(
                ranks[direction][a],
                ranks[direction][b],
                k,
                recall_at,
                bootstrap.resamples,
                bootstrap.seed,
                bootstrap.level,
                ties,
            )
            rows += [
                {"direction": direction, "metric": metric, "model_a": a, "model_b": b, **stats}
                for metric, stats in result.items()
            ]
    # The family the report shows (every pair, both directions, each R@k and MRR) is adjusted
    # together, and "significant" is decided on the adjusted p-value.
    family = [i for i, r in enumerate(rows) if r["metric"] in compared_metrics(recall_at)]
    adjusted = holm([rows[i]["p_value"] for i in family])
    alpha = 1 - bootstrap.level
    for row in rows:
        row["p_holm"], row["in_family"] = None, False
        row["significant"] = row["p_value"] < alpha  # outside the family: unadjusted
    for i, p in zip(family, adjusted.tolist(), strict=True):
        rows[i] |= {"p_holm": p, "in_family": True, "significant": p < alpha}
    columns = [
        "direction",
        "metric",
        "model_a",
        "model_b",
        "difference",
        "ci_low",
        "ci_high",
        "p_value",
        "p_holm",
        "significant",
        "in_family",
    ]
    table = pa.table(
        {c: [r[c] for r in rows] for c in columns},
        schema=pa.schema(
            [(c, pa.string()) for c in columns[:4]]
            + [(c, pa.float64()) for c in columns[4:9]]
            + [("significant", pa.bool_()), ("in_family", pa.bool_())]
        ),
    )
    meta = {"models": list(models), "k": k, "bootstrap": bootstrap.as_dict(), "ties": ties}
    meta["family"] = {"tests": len(family), "adjustment": "holm", "alpha": alpha}
    write_table(table, out_path, meta)


def placement_of(hits_path: str) -> QueryRanks:
    """Each query's placement as a hits table records it."""
    table = read_table(hits_path)
    return QueryRanks.from_columns(
        table["rank"].to_numpy(), table["ties"].to_numpy(), table["tied_positives"].to_numpy()
    )


def queries(images_path: str, queries_path: str, dataset_path: str, k: int, out_path: str) -> None:
    """Top-K images for each free-text query, with the retrieved images' captions."""
    images, query_table = read_table(images_path), read_table(queries_path)
    scores = embedding_matrix(query_table["embedding"]) @ embedding_matrix(images["embedding"]).T
    idx = topk(scores, k, setting="queries.top_k")
    image_ids = images["id"].to_numpy()[idx]
    captions = read_table(dataset_path)["text"].to_pylist()  # an image's first caption, by id
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
