"""Text→image retrieval from L2-normalised embeddings: similarity, ranks, top-K and metrics.

Ties: a caption's rank is 1 + the number of *other* images scoring greater than **or equal
to** its own image (pessimistic). A model that gives every image the same score therefore
ranks every caption last instead of collecting hits by luck. Top-K lists order by score,
then put the caption's own image after other images of equal score, then dataset order, so
"own image in the top-K list" and "rank ≤ K" always agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clipbench.errors import InputError


@dataclass(frozen=True)
class RetrievalBlock:
    """Results for a contiguous block of captions (rows of the similarity matrix)."""

    start: int
    scores: np.ndarray  # (b, n_images) float32 cosine similarities
    rank: np.ndarray  # (b,) int64, 1 = best
    positive_score: np.ndarray  # (b,) float32
    topk_index: np.ndarray  # (b, k) int64 indices into the image list
    topk_score: np.ndarray  # (b, k) float32


def check_k(k: int, n_candidates: int) -> None:
    if k <= 0:
        raise InputError(f"top-K must be positive, got {k}")
    if k > n_candidates:
        raise InputError(f"top-K = {k} is larger than the {n_candidates} candidate images")


def topk(scores: np.ndarray, k: int, positive: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best columns per row, best first, ties broken as the module says."""
    n = scores.shape[1]
    check_k(k, n)
    # Sort exactly only the columns reaching the k-th best score, ties at the cut included.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for row in range(scores.shape[0]):
        cand = np.flatnonzero(scores[row] >= kth[row, 0])
        own = np.zeros(cand.size, dtype=bool) if positive is None else cand == positive[row]
        # lexsort: last key is primary → score desc, then own image last, then index asc.
        order = np.lexsort((cand, own, -scores[row, cand]))
        out[row] = cand[order[:k]]
    return out


def iter_retrieval(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    positive: np.ndarray,
    k: int,
    block_rows: int = 1024,
) -> Iterator[RetrievalBlock]:
    """Stream caption blocks so memory stays O(block_rows × n_images), never N×N at once."""
    positive = np.asarray(positive, dtype=np.int64)
    n_images = image_emb.shape[0]
    check_k(k, n_images)
    if positive.shape != (text_emb.shape[0],):
        raise ValueError("positive must give one image index per caption")
    if positive.size and (positive.min() < 0 or positive.max() >= n_images):
        raise ValueError("positive image index out of range")
    image_t = np.ascontiguousarray(image_emb.T, dtype=np.float32)
    for start in range(0, text_emb.shape[0], block_rows):
        scores = np.asarray(text_emb[start : start + block_rows], dtype=np.float32) @ image_t
        yield block_results(scores, positive[start : start + block_rows], k, start)


def block_results(scores: np.ndarray, positive: np.ndarray, k: int, start: int = 0):
    rows = np.arange(scores.shape[0])
    own = scores[rows, positive]
    # Counting the own image itself makes this 1 + #(other images scoring >= own).
    rank = (scores >= own[:, None]).sum(axis=1).astype(np.int64)
    idx = topk(scores, k, positive)
    return RetrievalBlock(
        start,
        scores,
        rank,
        own.astype(np.float32),
        idx,
        np.take_along_axis(scores, idx, axis=1).astype(np.float32),
    )


def ranks_from_scores(scores: np.ndarray, positive: Sequence[int]) -> np.ndarray:
    """Reference (dense) rank of each row's positive column, same tie rule."""
    scores = np.asarray(scores)
    own = scores[np.arange(scores.shape[0]), np.asarray(positive)]
    return (scores >= own[:, None]).sum(axis=1).astype(np.int64)


def retrieval_metrics(rank: np.ndarray, k: int, recall_at: Sequence[int]) -> dict[str, float]:
    """Summary metrics from 1-based ranks. hits@K is the seed study's "score"."""
    rank = np.asarray(rank, dtype=np.float64)
    n = rank.size
    if n == 0:
        raise InputError("no captions to evaluate")
    metrics: dict[str, float] = {
        "n": n,
        "k": k,
        "hits_at_k": int((rank <= k).sum()),
        "accuracy": float((rank <= k).mean()),
    }
    for r in recall_at:
        metrics[f"recall_at_{r}"] = float((rank <= r).mean())
    metrics["mrr"] = float((1.0 / rank).mean())
    metrics["mean_rank"] = float(rank.mean())
    metrics["median_rank"] = float(np.median(rank))
    return metrics
