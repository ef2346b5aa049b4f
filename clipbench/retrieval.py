"""Retrieval from L2-normalised embeddings, in either direction: ranks and top-K lists.

A *query* (a caption for text→image, an image for image→text) has one or more *positive*
candidates: a caption's own image; an image's own captions. Queries and candidates carry a
group id (the image index) and a candidate is positive for a query when the groups match.

Rank of a query = 1 + the number of non-positive candidates scoring greater than **or equal
to** its best positive (pessimistic ties). A model that gives every candidate the same score
therefore ranks every query last instead of collecting hits by luck. Top-K lists order by
score, then put positives after non-positives of equal score, then candidate order, so "a
positive is in the top-K list" and "rank ≤ K" always agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clipbench.errors import InputError

# 16M scores per block: 64 MB of float32, whatever the number of candidates.
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RetrievalBlock:
    """Results for a contiguous block of queries (rows of the similarity matrix)."""

    start: int
    scores: np.ndarray  # (b, n_candidates) float32 cosine similarities
    rank: np.ndarray  # (b,) int64, 1 = best
    positive_score: np.ndarray  # (b,) float32, the best positive's score
    topk_index: np.ndarray  # (b, k) int64 indices into the candidates
    topk_score: np.ndarray  # (b, k) float32


def check_k(k: int, n_candidates: int) -> None:
    if k <= 0:
        raise InputError(f"top-K must be positive, got {k}")
    if k > n_candidates:
        raise InputError(f"top-K = {k} is larger than the {n_candidates} candidates")


def _topk_exact_row(scores: np.ndarray, k: int, positive: np.ndarray | None) -> np.ndarray:
    # Sort exactly the columns reaching the k-th best score, ties at the cut included.
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    cand = np.flatnonzero(scores >= kth)
    own = np.zeros(cand.size, bool) if positive is None else positive[cand]
    # lexsort: last key is primary → score desc, then positives last, then index asc.
    return cand[np.lexsort((cand, own, -scores[cand]))[:k]]


def topk(scores: np.ndarray, k: int, positive: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best columns per row, best first, ties broken as the module says.

    ``positive`` is an optional boolean mask of the same shape as ``scores``. Rows without a
    tie at the k-th score (nearly all, with float scores) are ordered in one vectorised sort;
    rows with one fall back to an exact per-row sort.
    """
    check_k(k, scores.shape[1])
    # torch.topk selects in parallel and faster than np.argpartition; the order is made below.
    part = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
    top = np.take_along_axis(scores, part, axis=1)
    own = (
        np.zeros(part.shape, bool)
        if positive is None
        else np.take_along_axis(positive, part, axis=1)
    )
    out = np.take_along_axis(part, np.lexsort((part, own, -top), axis=-1), axis=1)
    tied = (scores >= top.min(axis=1, keepdims=True)).sum(axis=1) > k
    for row in np.flatnonzero(tied):
        out[row] = _topk_exact_row(scores[row], k, None if positive is None else positive[row])
    return out


def block_results(scores: np.ndarray, positive: np.ndarray, k: int, start: int = 0):
    """Ranks and top-K for a block of score rows with a boolean positive mask."""
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best = np.where(positive, scores, -np.inf).max(axis=1)
    rank = 1 + ((scores >= best[:, None]) & ~positive).sum(axis=1)
    idx = topk(scores, k, positive)
    return RetrievalBlock(
        start,
        scores,
        rank.astype(np.int64),
        best.astype(np.float32),
        idx,
        np.take_along_axis(scores, idx, axis=1).astype(np.float32),
    )


def iter_retrieval(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    query_group: np.ndarray,
    cand_group: np.ndarray,
    k: int,
    block_rows: int = 1024,
) -> Iterator[RetrievalBlock]:
    """Stream query blocks so memory stays O(block_rows × n_candidates), never N×N at once."""
    query_group, cand_group = np.asarray(query_group), np.asarray(cand_group)
    check_k(k, cand_emb.shape[0])
    if query_group.shape != (query_emb.shape[0],) or cand_group.shape != (cand_emb.shape[0],):
        raise ValueError("one group id per query and per candidate")
    # torch's matmul (MKL/oneDNN, all cores) outpaces numpy's bundled BLAS here.
    cand_t = torch.from_numpy(np.ascontiguousarray(cand_emb.T, dtype=np.float32))
    queries = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32))
    # Cap a block's score matrix (and its same-sized temporaries) at BLOCK_ELEMENTS entries.
    block_rows = max(1, min(block_rows, BLOCK_ELEMENTS // max(1, cand_emb.shape[0])))
    for start in range(0, query_emb.shape[0], block_rows):
        stop = start + block_rows
        scores = (queries[start:stop] @ cand_t).numpy()
        positive = query_group[start:stop, None] == cand_group[None, :]
        yield block_results(scores, positive, k, start)


def ranks_from_scores(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Reference (dense, unblocked) rank per row, same tie rule; ``positive`` is a mask."""
    scores = np.asarray(scores)
    best = np.where(positive, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~positive).sum(axis=1)


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query results of a whole retrieval run (no score matrix kept)."""

    rank: np.ndarray
    positive_score: np.ndarray
    topk_index: np.ndarray
    topk_score: np.ndarray


def retrieve(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    query_group: np.ndarray,
    cand_group: np.ndarray,
    k: int,
    block_rows: int = 1024,
) -> RetrievalResult:
    """Concatenated block results; memory O(block_rows × n_candidates + n_queries × k)."""
    parts = [
        (b.rank, b.positive_score, b.topk_index, b.topk_score)
        for b in iter_retrieval(query_emb, cand_emb, query_group, cand_group, k, block_rows)
    ]
    return RetrievalResult(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def text_to_image(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    caption_image: np.ndarray,
    k: int,
    block_rows: int = 1024,
) -> RetrievalResult:
    """Every caption searches all images; its positive is its own image (ids = row indices)."""
    n_images = image_emb.shape[0]
    return retrieve(text_emb, image_emb, caption_image, np.arange(n_images), k, block_rows)


def image_to_text(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    caption_image: np.ndarray,
    k: int,
    block_rows: int = 1024,
) -> RetrievalResult:
    """Every image searches all captions; its positives are all of its own captions."""
    n_images = image_emb.shape[0]
    return retrieve(image_emb, text_emb, np.arange(n_images), caption_image, k, block_rows)
