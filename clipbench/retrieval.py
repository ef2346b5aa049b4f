"""Retrieval from L2-normalised embeddings, in either direction: ranks and top-K lists.

A *query* (a caption for text→image, an image for image→text) has one or more *positive*
candidates: a caption's own image; an image's own captions. Queries and candidates carry a
group id (the image index) and a candidate is positive for a query when the groups match.

Each query's best positive is placed by three counts: non-positives scoring above it, those
scoring the same (``ties``), and the positives at its score (``tied_positives``); the metrics
take ties from there (:mod:`clipbench.metrics`: expected over tied orders by default). The
``rank`` kept per query counts the tied non-positives as above it (pessimistic), as the top-K
lists order: by score, then positives after non-positives of equal score, then candidate
order, so "a positive is in the top-K list" and "rank ≤ K" always agree.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clipbench.errors import InputError
from clipbench.metrics import QueryRanks

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the stages that only read embeddings
# (similarity, queries, histogram, compare) start without it, in a fraction of a second.

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
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the k best, unordered
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


def placement_from_scores(scores: np.ndarray, positive: np.ndarray) -> QueryRanks:
    """Reference (dense, unblocked) placement of each row's best positive; ``positive`` is a
    mask."""
    scores = np.asarray(scores)
    best = np.where(positive, scores, -np.inf).max(axis=1)[:, None]
    return QueryRanks(
        ((scores > best) & ~positive).sum(axis=1),
        ((scores == best) & ~positive).sum(axis=1),
        ((scores == best) & positive).sum(axis=1),
    )


def ranks_from_scores(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Reference rank per row, tied non-positives counted above (the top-K lists' order)."""
    return placement_from_scores(scores, positive).rank("pessimistic").astype(np.int64)


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query results of a whole retrieval run (no score matrix kept)."""

    rank: np.ndarray  # (n_queries,) int64, 1 = best, tied non-positives counted above
    positive_score: np.ndarray  # (n_queries,) float32, the best positive's score
    topk_index: np.ndarray  # (n_queries, k) int64 indices into the candidates
    topk_score: np.ndarray  # (n_queries, k) float32
    ties: np.ndarray  # (n_queries,) int64, non-positives scoring the same as the best positive
    tied_positives: np.ndarray  # (n_queries,) int64, positives at that score (≥ 1)

    @property
    def placement(self) -> QueryRanks:
        return QueryRanks.from_columns(self.rank, self.ties, self.tied_positives)


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
        # Sorted by query, then by one composite key: score descending, positives last,
        # candidate ascending (two lexsort keys instead of four).
        order = np.lexsort((_order_key(score, positive, cand), query))
        query = query[order]
        slot = np.arange(query.size) - np.searchsorted(query, query, side="left")
        kept = slot < self.k
        at, keep = (query[kept], slot[kept]), order[kept]
        self.score[at], self.index[at], self.positive[at] = score[keep], cand[keep], positive[keep]


def _order_key(score: np.ndarray, positive: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as (score descending, positives last, candidate ascending)."""
    bits = (np.asarray(score, np.float32) + np.float32(0)).view(np.uint32)  # -0.0 → +0.0
    # IEEE-754 floats order as integers once negative ones have all bits flipped and positive
    # ones the sign bit set; flipping all of that gives descending order.
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
    descending = (~ascending).astype(np.uint64)
    return (
        (descending << np.uint64(32))
        | (positive.astype(np.uint64) << np.uint64(31))
        | (cand.astype(np.uint64))
    )


def tile_stats(scores, floor_rows, floor_cols):
    """One pass over a score tile: per row and per column, how many entries reach the floor
    (the query's positive score) and how many pass it (the two give its rank and its ties),
    and the largest entry (whether anything can enter its top-K list)."""
    import torch

    rows, cols = floor_rows[:, None], floor_cols[None, :]
    return (
        (scores >= rows).sum(1, dtype=torch.int32),
        (scores >= cols).sum(0, dtype=torch.int32),
        (scores > rows).sum(1, dtype=torch.int32),
        (scores > cols).sum(0, dtype=torch.int32),
        scores.amax(1),
        scores.amax(0),
    )


def _top_floor(scores, floor: np.ndarray, k: int, dim: int):
    """The lowest score that can enter each query's top-k list: its current k-th best, or on
    its first tile (−inf, a list not yet full) the tile's own k-th best."""
    import torch

    if np.isneginf(floor).all():
        across = 1 - dim
        return torch.topk(scores, min(k, scores.shape[across]), dim=across).values.select(
            across, -1
        )
    return torch.from_numpy(np.ascontiguousarray(floor)).to(scores.device)


def _entries(scores, floor, best, dim: int):
    """(query, candidate, score) of the tile's entries at or above each query's top-K
    ``floor``, queries along ``dim`` (0: rows, 1: columns), as numpy arrays; only queries
    whose largest entry (``best``) reaches their floor are searched entry by entry."""
    import torch

    (reaching,) = torch.nonzero(best >= floor, as_tuple=True)
    if reaching.numel() == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    across = 1 - dim
    sub = scores.index_select(dim, reaching)
    found = torch.nonzero(sub >= floor[reaching].unsqueeze(across), as_tuple=True)
    query, cand = found if dim == 0 else found[::-1]
    return reaching[query].cpu().numpy(), cand.cpu().numpy(), sub[found].cpu().numpy()


@dataclass
class _PassState:
    """What a tiled pass accumulates per query (captions in grouped order, images in theirs)."""

    k: int
    order: np.ndarray  # grouped position → the caption's own index
    positive_score: torch.Tensor  # per caption, set by its diagonal tile
    best: torch.Tensor  # per image, its best positive's score, set by its diagonal tile
    count_t: torch.Tensor  # per caption, scores ≥ its positive's
    count_i: torch.Tensor  # per image, scores ≥ its best positive's
    above_t: torch.Tensor  # per caption, scores > its positive's
    above_i: torch.Tensor  # per image, scores > its best positive's
    top_t: RunningTopK
    top_i: RunningTopK


def _reduce_torch(state: _PassState, scores, rows: slice, cols: slice, own_col) -> None:
    """One tile's counts and top-K candidates in torch: any device; the native pass's reference."""
    reach_rows, reach_cols, pass_rows, pass_cols, max_rows, max_cols = tile_stats(
        scores, state.positive_score[rows], state.best[cols]
    )
    state.count_t[rows] += reach_rows
    state.count_i[cols] += reach_cols
    state.above_t[rows] += pass_rows
    state.above_i[cols] += pass_cols
    k, top_t, top_i = state.k, state.top_t, state.top_i
    floor = _top_floor(scores, top_t.threshold(rows), k, dim=0)
    r, c, v = _entries(scores, floor, max_rows, dim=0)
    own = own_col[r] == c if own_col is not None else np.zeros(r.size, bool)
    top_t.offer(r + rows.start, c + cols.start, v, own)
    floor = _top_floor(scores, top_i.threshold(cols), k, dim=1)
    c, r, v = _entries(scores, floor, max_cols, dim=1)
    own = own_col[r] == c if own_col is not None else np.zeros(r.size, bool)
    top_i.offer(c + cols.start, state.order[r + rows.start], v, own)


class NativeTilePass:
    """One tile's counts and top-K merge in one C pass over it (clipbench/tile_pass.c), split
    by rows and by column stripes over ``threads`` threads: torch's OpenMP ones where the
    library is built with OpenMP, else Python threads (ctypes releases the GIL). Per 2048²
    tile on 2 cores it replaces ~8 ms of torch reductions, gathers and merges."""

    def __init__(self, lib, threads: int):
        import ctypes

        from clipbench import native

        pointer, integer = ctypes.c_void_p, ctypes.c_int64
        arguments = [pointer, integer, integer, integer] + [pointer] * 3
        arguments += [integer] + [pointer] * 11
        native.declare_split(lib, "tile_pass", arguments, None)
        self.lib, self.threads = lib, threads

    def __call__(self, state: _PassState, scores, rows: slice, cols: slice, own_col) -> None:
        assert scores.is_contiguous() and scores.device.type == "cpu"
        n_rows, n_cols = scores.shape
        if own_col is not None:
            own_col = np.ascontiguousarray(own_col, dtype=np.int64)

        def at(array, start: int):  # address of row `start` (torch tensor or numpy array)
            if isinstance(array, np.ndarray):
                return array.ctypes.data + start * array.strides[0]
            return array.data_ptr() + start * array.stride(0) * array.element_size()

        k, top_t, top_i = state.k, state.top_t, state.top_i
        args = [
            scores.data_ptr(),
            n_rows,
            n_cols,
            k,
            at(state.positive_score, rows.start),
            at(state.best, cols.start),
            None if own_col is None else own_col.ctypes.data,
            cols.start,
            at(state.order, rows.start),
            at(state.count_t, rows.start),
            at(state.above_t, rows.start),
            at(top_t.score, rows.start),
            at(top_t.index, rows.start),
            at(top_t.positive, rows.start),
            at(state.count_i, cols.start),
            at(state.above_i, cols.start),
            at(top_i.score, cols.start),
            at(top_i.index, cols.start),
            at(top_i.positive, cols.start),
        ]
        from clipbench import native

        native.run_split(self.lib, "tile_pass", tuple(args), self.threads)


TILE_KERNELS = ("auto", "native", "torch")


def _tile_reducer(device: torch.device, kernel: str):
    """The native pass on CPU where it builds (``auto``) or is asked for, else torch."""
    import torch

    if kernel == "torch" or device.type != "cpu":
        return _reduce_torch
    from clipbench import native

    lib = native.load("tile_pass", native.OPENMP_FLAGS)
    if lib is None:
        if kernel == "native":
            raise RuntimeError("the native tile pass cannot be built here (no C compiler?)")
        return _reduce_torch
    return NativeTilePass(lib, torch.get_num_threads())


def _tensor(matrix: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device``; on CPU it shares the array's memory (read-only arrays,
    memory-mapped embeddings, are fine: nothing here writes to them)."""
    import torch

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(matrix).to(device)


def retrieve_dense(
    text_emb: np.ndarray, image_emb: np.ndarray, caption_image: np.ndarray, k: int
) -> tuple[RetrievalResult, RetrievalResult]:
    """Both directions from the whole score matrix at once, in numpy: what a matrix that fits
    one tile needs (no torch to import, a fraction of a second for the default 833 × 833)."""
    scores = np.asarray(text_emb, np.float32) @ np.asarray(image_emb, np.float32).T
    positive = caption_image[:, None] == np.arange(scores.shape[1])[None, :]
    out = []
    for s, mask in ((scores, positive), (np.ascontiguousarray(scores.T), positive.T)):
        top = topk(s, k, mask)
        placement = placement_from_scores(s, mask)
        out.append(
            RetrievalResult(
                placement.rank("pessimistic").astype(np.int64),
                np.where(mask, s, -np.inf).max(axis=1).astype(np.float32),
                top,
                np.take_along_axis(s, top, 1),
                placement.tied.astype(np.int64),
                placement.positives.astype(np.int64),
            )
        )
    return out[0], out[1]


def retrieve_both(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    caption_image: np.ndarray,
    k: int,
    tile_scores: int = TILE_SCORES,
    device: str | None = None,
    kernel: str = "auto",
) -> tuple[RetrievalResult, RetrievalResult]:
    """Text→image (each caption searches all images, its own image is the positive) and
    image→text (each image searches all captions, its own captions are positives) from one
    pass over the caption × image score matrix, tile by tile, on ``device`` (default: the
    job's GPU if it has one). ``kernel``: what reduces each tile on CPU, ``native`` (the C
    pass, clipbench/tile_pass.c), ``torch``, or ``auto`` (native where it builds).

    A matrix that fits one tile is computed densely (:func:`retrieve_dense`). Otherwise
    memory is O(tile_scores + (n_texts + n_images) × k); the matrix is never held. Every score
    is computed once and serves both directions. Captions are visited grouped by image and the
    diagonal tiles (which hold every positive pair) come first, so each query's best positive
    score is known, exactly as the tile computed it, before any of its rank counts are made.
    """
    if kernel not in TILE_KERNELS:  # refused even where a dense matrix needs no tile kernel
        raise ValueError(f"unknown tile kernel {kernel!r}")
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

    if n_texts * n_images <= tile_scores and device in (None, "auto", "cpu"):
        return retrieve_dense(text_emb, image_emb, caption_image, k)
    import torch

    from clipbench.precision import resolve_device

    where = resolve_device(device or "auto")  # the job's GPU when it has one
    order = np.argsort(caption_image, kind="stable")  # captions grouped by image
    own = caption_image[order]
    grouped = bool((order == np.arange(n_texts)).all())  # usual: no copy needed
    texts = _tensor(text_emb if grouped else text_emb[order], where)
    images = _tensor(image_emb, where)
    own_t = torch.from_numpy(own).to(where)
    # Square-ish tiles: `width` images by the captions of `width` images.
    width = max(1, min(n_images, int(math.sqrt(tile_scores * n_images / n_texts))))
    image_cuts = np.arange(0, n_images + width, width).clip(max=n_images)
    caption_cuts = np.searchsorted(own, image_cuts)
    tiles = len(image_cuts) - 1
    largest = int(np.diff(caption_cuts).max()) * width
    # Reused: no 64 MB page faults per tile.
    buffer = torch.empty(largest, dtype=torch.float32, device=where)
    state = _PassState(
        k=k,
        order=order,
        positive_score=torch.empty(n_texts, dtype=torch.float32, device=where),  # sorted order
        best=torch.full((n_images,), -torch.inf, dtype=torch.float32, device=where),
        count_t=torch.zeros(n_texts, dtype=torch.int64, device=where),
        count_i=torch.zeros(n_images, dtype=torch.int64, device=where),
        above_t=torch.zeros(n_texts, dtype=torch.int64, device=where),
        above_i=torch.zeros(n_images, dtype=torch.int64, device=where),
        top_t=RunningTopK(n_texts, k),
        top_i=RunningTopK(n_images, k),
    )
    reduce_tile = _tile_reducer(where, kernel)

    def visit(a: int, b: int) -> None:
        rows = slice(int(caption_cuts[a]), int(caption_cuts[a + 1]))
        cols = slice(int(image_cuts[b]), int(image_cuts[b + 1]))
        n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
        scores = buffer[: n_rows * n_cols].view(n_rows, n_cols)
        torch.matmul(texts[rows], images[cols].T, out=scores)
        own_col = None  # per row, its positive's column in this tile
        if a == b:  # the diagonal tile holds all positives of these rows and columns
            own_col = own[rows] - cols.start
            positive = scores[torch.arange(n_rows, device=where), own_t[rows] - cols.start]
            state.positive_score[rows] = positive
            state.best.scatter_reduce_(0, own_t[rows], positive, "amax")
        reduce_tile(state, scores, rows, cols, own_col)

    with torch.inference_mode():
        for a in range(tiles):
            visit(a, a)
        for a in range(tiles):
            for b in range(tiles):
                if a != b:
                    visit(a, b)

    positive_score, best, top_t, top_i = state.positive_score, state.best, state.top_t, state.top_i
    count_t, count_i, above_t, above_i = state.count_t, state.count_i, state.above_t, state.above_i
    positive_np = positive_score.cpu().numpy()
    best_np = best.cpu().numpy()
    # Counts include the positives reaching the threshold: a caption's own (always), an
    # image's own captions at or above its best.
    own_at_best = np.bincount(own, weights=positive_np >= best_np[own], minlength=n_images).astype(
        np.int64
    )
    restore = np.argsort(order)
    count_t_np, count_i_np = count_t.cpu().numpy()[restore], count_i.cpu().numpy()
    t2i = RetrievalResult(
        count_t_np,
        positive_np[restore],
        top_t.index[restore],
        top_t.score[restore],
        count_t_np - 1 - above_t.cpu().numpy()[restore],  # less its own image
        np.ones(n_texts, np.int64),
    )
    i2t = RetrievalResult(
        1 + count_i_np - own_at_best,
        best_np,
        top_i.index,
        top_i.score,
        count_i_np - own_at_best - above_i.cpu().numpy(),  # no positive passes the best
        own_at_best,
    )
    return t2i, i2t
