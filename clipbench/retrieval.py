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

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from clipbench.errors import InputError

# 4M scores per tile: 16 MB of float32, which stays in a typical L3 cache while the tile's
# counts and top-K candidates are read off it.
TILE_SCORES = 1 << 22


def check_k(k: int, n_candidates: int, setting: str = "retrieval.top_k") -> None:
    """``setting``: the config key that gave ``k``, for the message."""
    if k <= 0:
        raise InputError(f"top-K must be positive, got {setting} = {k}; set it to 1 or more")
    if k > n_candidates:
        raise InputError(
            f"top-K = {k} is larger than the {n_candidates} candidates (images, or captions "
            f"for image→text); set {setting} to at most {n_candidates}"
        )


def _topk_exact_row(scores: np.ndarray, k: int, positive: np.ndarray | None) -> np.ndarray:
    # Sort exactly the columns reaching the k-th best score, ties at the cut included.
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    cand = np.flatnonzero(scores >= kth)
    own = np.zeros(cand.size, bool) if positive is None else positive[cand]
    # lexsort: last key is primary → score desc, then positives last, then index asc.
    return cand[np.lexsort((cand, own, -scores[cand]))[:k]]


def topk(
    scores: np.ndarray,
    k: int,
    positive: np.ndarray | None = None,
    setting: str = "retrieval.top_k",
) -> np.ndarray:
    """Indices of the k best columns per row, best first, ties broken as the module says.

    ``positive`` is an optional boolean mask of the same shape as ``scores``. Rows without a
    tie at the k-th score (nearly all, with float scores) are ordered in one vectorised sort;
    rows with one fall back to an exact per-row sort.
    """
    check_k(k, scores.shape[1], setting)
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


def ranks_from_scores(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Reference (dense, unblocked) rank per row, same tie rule; ``positive`` is a mask."""
    scores = np.asarray(scores)
    best = np.where(positive, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~positive).sum(axis=1)


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query results of a whole retrieval run (no score matrix kept)."""

    rank: np.ndarray  # (n_queries,) int64, 1 = best
    positive_score: np.ndarray  # (n_queries,) float32, the best positive's score
    topk_index: np.ndarray  # (n_queries, k) int64 indices into the candidates
    topk_score: np.ndarray  # (n_queries, k) float32


class RunningTopK:
    """The k best candidates per query seen so far, in the module's order, fed tile by tile."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.score = np.full((n_queries, k), -np.inf, np.float32)
        self.index = np.full((n_queries, k), -1, np.int64)  # -1: slot still empty
        self.positive = np.zeros((n_queries, k), bool)

    def threshold(self, queries: slice) -> np.ndarray:
        """Per query, the lowest score that can still enter (−inf while a slot is empty)."""
        return self.score[queries, -1]

    def offer(self, query, cand, score, positive) -> None:
        """Merge candidate entries (flat arrays) into the lists of the queries they name."""
        if query.size == 0:
            return
        touched = np.unique(query)
        held = self.index[touched] >= 0
        query = np.concatenate([np.repeat(touched, held.sum(axis=1)), query])
        cand = np.concatenate([self.index[touched][held], cand])
        score = np.concatenate([self.score[touched][held], score])
        positive = np.concatenate([self.positive[touched][held], positive])
        # lexsort: last key is primary → query, score desc, positives last, candidate asc.
        order = np.lexsort((cand, positive, -score, query))
        query, cand, score, positive = query[order], cand[order], score[order], positive[order]
        first = np.searchsorted(query, query, side="left")
        slot = np.arange(query.size) - first
        keep = slot < self.k
        at = query[keep], slot[keep]
        self.score[at], self.index[at], self.positive[at] = score[keep], cand[keep], positive[keep]


def _tile_candidates(scores: torch.Tensor, floor: np.ndarray, k: int, dim: int):
    """(query, candidate) positions in a tile of the entries that may enter the top-k lists
    of the queries along ``dim`` (0: rows are queries, 1: columns are).

    On a query's first tile (``floor`` −inf) that is its top k plus any ties at the cut; after
    that, the entries reaching its current k-th best (rarely more than a few).
    """
    across = 1 - dim
    if np.isneginf(floor).all():
        floor = torch.topk(scores, min(k, scores.shape[across]), dim=across).values
        floor = floor.select(across, -1).numpy()
    floor = torch.from_numpy(np.ascontiguousarray(floor))
    # A maximum per query is one cheap pass; only the few queries reaching their floor are
    # searched entry by entry.
    (reaching,) = torch.nonzero(scores.amax(dim=across) >= floor, as_tuple=True)
    sub = scores.index_select(dim, reaching)
    found = torch.nonzero(sub >= floor[reaching].unsqueeze(across), as_tuple=True)
    query, cand = found if dim == 0 else found[::-1]
    return reaching[query].numpy(), cand.numpy()


def _tensor(matrix: np.ndarray) -> torch.Tensor:
    """A float32 tensor sharing the array's memory; read-only arrays (memory-mapped
    embeddings) are fine because nothing here writes to them."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(matrix)


def retrieve_both(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    caption_image: np.ndarray,
    k: int,
    tile_scores: int = TILE_SCORES,
) -> tuple[RetrievalResult, RetrievalResult]:
    """Text→image (each caption searches all images, its own image is the positive) and
    image→text (each image searches all captions, its own captions are positives) from one
    pass over the caption × image score matrix, tile by tile.

    Memory is O(tile_scores + (n_texts + n_images) × k); the matrix is never held. Every score
    is computed once and serves both directions. Captions are visited grouped by image and the
    diagonal tiles (which hold every positive pair) come first, so each query's best positive
    score is known, exactly as the tile computed it, before any of its rank counts are made.
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_texts, n_images = text_emb.shape[0], image_emb.shape[0]
    check_k(k, n_images)
    check_k(k, n_texts)
    if caption_image.shape != (n_texts,):
        raise ValueError("one image id per caption")
    if caption_image.min(initial=0) < 0 or caption_image.max(initial=0) >= n_images:
        raise ValueError("caption image ids must be image row indices")
    captions_per_image = np.bincount(caption_image, minlength=n_images)
    if (captions_per_image == 0).any():
        raise ValueError("every query needs at least one positive candidate")

    order = np.argsort(caption_image, kind="stable")  # captions grouped by image
    own = caption_image[order]
    grouped = bool((order == np.arange(n_texts)).all())  # usual: no copy needed
    texts = _tensor(text_emb if grouped else text_emb[order])
    images = _tensor(image_emb)
    # Square-ish tiles: `width` images by the captions of `width` images.
    width = max(1, min(n_images, int(math.sqrt(tile_scores * n_images / n_texts))))
    image_cuts = np.arange(0, n_images + width, width).clip(max=n_images)
    caption_cuts = np.searchsorted(own, image_cuts)
    tiles = len(image_cuts) - 1
    largest = int(np.diff(caption_cuts).max()) * width
    buffer = torch.empty(largest, dtype=torch.float32)  # reused: no 64 MB page faults per tile

    positive_score = np.empty(n_texts, np.float32)  # sorted caption order
    best = np.full(n_images, -np.inf, np.float32)
    count_t = np.zeros(n_texts, np.int64)  # entries ≥ the caption's positive score
    count_i = np.zeros(n_images, np.int64)  # entries ≥ the image's best positive score
    top_t, top_i = RunningTopK(n_texts, k), RunningTopK(n_images, k)

    def visit(a: int, b: int) -> None:
        rows = slice(caption_cuts[a], caption_cuts[a + 1])
        cols = slice(image_cuts[b], image_cuts[b + 1])
        n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
        scores = buffer[: n_rows * n_cols].view(n_rows, n_cols)
        torch.matmul(texts[rows], images[cols].T, out=scores)
        values = scores.numpy()
        local = own[rows] - cols.start
        if a == b:  # the diagonal tile holds all positives of these rows and columns
            positive_score[rows] = values[np.arange(n_rows), local]
            np.maximum.at(best, own[rows], positive_score[rows])
        count_t[rows] += (
            (scores >= torch.from_numpy(positive_score[rows])[:, None])
            .sum(1, dtype=torch.int32)
            .numpy()
        )
        count_i[cols] += (
            (scores >= torch.from_numpy(best[cols])[None, :]).sum(0, dtype=torch.int32).numpy()
        )
        r, c = _tile_candidates(scores, top_t.threshold(rows), k, dim=0)
        top_t.offer(r + rows.start, c + cols.start, values[r, c], (a == b) & (local[r] == c))
        c, r = _tile_candidates(scores, top_i.threshold(cols), k, dim=1)
        top_i.offer(c + cols.start, order[r + rows.start], values[r, c], (a == b) & (local[r] == c))

    for a in range(tiles):
        visit(a, a)
    for a in range(tiles):
        for b in range(tiles):
            if a != b:
                visit(a, b)

    # Counts include the positives reaching the threshold: a caption's own (always), an
    # image's own captions at or above its best.
    own_at_best = np.bincount(own, weights=positive_score >= best[own], minlength=n_images)
    restore = np.argsort(order)
    t2i = RetrievalResult(
        count_t[restore],
        positive_score[restore],
        top_t.index[restore],
        top_t.score[restore],
    )
    i2t = RetrievalResult(
        1 + count_i - own_at_best.astype(np.int64), best, top_i.index, top_i.score
    )
    return t2i, i2t
