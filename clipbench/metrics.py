"""Summary metrics from per-query ranks, their chance levels, and bootstrap uncertainty.

All metrics are functions of the 1-based rank of each query's best positive (see
:mod:`clipbench.retrieval`), so one vectorised :func:`summarize` serves the point estimate, every
bootstrap resample and every paired difference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from clipbench.errors import InputError

# Resamples drawn per step: bounds memory at (chunk × n_queries) whatever the resample count.
BOOTSTRAP_CHUNK = 50
MEDIAN_BLOCK = 1024  # queries per block when locating a resample's median


def metric_names(recall_at: Sequence[int]) -> list[str]:
    return [
        "hits_at_k",
        "accuracy",
        *(f"recall_at_{r}" for r in recall_at),
        "mrr",
        "mean_rank",
        "median_rank",
        "weighted_score",
        "weighted_score_share",
    ]


def _per_query(r: np.ndarray, k: int, recall_at: Sequence[int]) -> dict[str, np.ndarray]:
    """Per query (float64 ranks, any leading axes), what the metrics sum over the queries."""
    out = {"hit": (r <= k).astype(np.float64)}
    for cutoff in recall_at:
        out[f"recall_at_{cutoff}"] = (r <= cutoff).astype(np.float64)
    return out | {"reciprocal": 1.0 / r, "rank": r, "points": np.clip(k + 1 - r, 0, None)}


def _from_sums(sums, n: int, k: int, recall_at: Sequence[int], median) -> dict[str, np.ndarray]:
    """Every metric from the per-query sums over ``n`` queries (and the median rank)."""
    out = {"hits_at_k": sums["hit"], "accuracy": sums["hit"] / n}
    for cutoff in recall_at:
        out[f"recall_at_{cutoff}"] = sums[f"recall_at_{cutoff}"] / n
    return out | {
        "mrr": sums["reciprocal"] / n,
        "mean_rank": sums["rank"] / n,
        "median_rank": median,
        "weighted_score": sums["points"],
        "weighted_score_share": sums["points"] / n / k,
    }


def summarize(ranks: np.ndarray, k: int, recall_at: Sequence[int]) -> dict[str, np.ndarray]:
    """Every metric over the last axis of ``ranks`` (leading axes: e.g. bootstrap resamples).

    hits@K is the seed study's "score" (a count); the weighted score is the seed's proposal:
    K points for rank 1, K−1 for rank 2, …, 1 for rank K; its share divides by N·K.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.shape[-1] == 0:
        raise InputError("no queries to evaluate")
    sums = {name: value.sum(-1) for name, value in _per_query(r, k, recall_at).items()}
    return _from_sums(sums, r.shape[-1], k, recall_at, np.median(r, axis=-1))


def first_positive_pmf(n: int, m: int) -> np.ndarray:
    """P(rank = r), r = 1…n−m+1, of the first of m positives among n candidates in random order.

    P(r) = C(n−r, m−1) / C(n, m), built by its ratio P(r+1)/P(r) = (n−r−m+1)/(n−r).
    """
    if not 1 <= m <= n:
        raise ValueError(f"need 1 ≤ positives ≤ candidates, got {m} of {n}")
    r = np.arange(1, n - m + 1, dtype=np.float64)
    ratios = (n - r - m + 1) / (n - r)
    return (m / n) * np.concatenate([[1.0], np.cumprod(ratios)])


def chance_metrics(
    n_candidates: int, n_positives: np.ndarray, k: int, recall_at: Sequence[int]
) -> dict[str, float]:
    """Expected metrics of a model that ranks candidates uniformly at random.

    E.g. text→image hits@5 over 833 captions and 833 images: 833 · 5/833 = 5.
    """
    n_positives = np.asarray(n_positives, dtype=np.int64)
    n_queries = n_positives.size
    mixture = np.zeros(n_candidates)
    for m, count in zip(*np.unique(n_positives, return_counts=True), strict=True):
        pmf = first_positive_pmf(n_candidates, int(m))
        mixture[: pmf.size] += pmf * count / n_queries
    ranks = np.arange(1, n_candidates + 1, dtype=np.float64)
    cdf = np.cumsum(mixture)

    def within(cutoff: int) -> float:
        return float(cdf[min(cutoff, n_candidates) - 1])

    out = {"hits_at_k": within(k) * n_queries, "accuracy": within(k)}
    for cutoff in recall_at:
        out[f"recall_at_{cutoff}"] = within(cutoff)
    out["mrr"] = float((mixture / ranks).sum())
    out["mean_rank"] = float((mixture * ranks).sum())
    out["median_rank"] = float(ranks[np.searchsorted(cdf, 0.5 - 1e-12)])
    points = float((mixture * np.clip(k + 1 - ranks, 0, None)).sum())
    out["weighted_score"] = points * n_queries
    out["weighted_score_share"] = points / k
    return out


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Query indices of each resample, in chunks; the same seed gives the same resamples, so
    every model (and every pair of models) is resampled on identical query sets."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        yield rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))


def _resampler(ranks: np.ndarray, k: int, recall_at: Sequence[int]):
    """Every metric on each resample given by ``counts`` (int64, resamples × queries: how
    often each query was drawn), as :func:`summarize` computes it on the drawn ranks: the sums
    as one matrix product, the median from the counts in rank order. What depends on the ranks
    alone is prepared once, for every chunk of resamples."""
    r = np.asarray(ranks, dtype=np.float64)
    n = r.size
    per_query = _per_query(r, k, recall_at)
    names = list(per_query)
    table = np.stack([per_query[m] for m in names], axis=1)
    order = np.argsort(r, kind="stable")
    sorted_r = r[order]
    block = MEDIAN_BLOCK
    padded = -(-n // block) * block

    def metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
        sums = counts.astype(np.float64) @ table
        # The position-th smallest drawn rank, located through block sums (a full cumulative
        # sum over resamples × queries would cost more than all the rest of the bootstrap).
        blocks = np.zeros((counts.shape[0], padded), np.int64)
        blocks[:, :n] = counts[:, order]
        block_ends = np.cumsum(blocks.reshape(counts.shape[0], -1, block).sum(axis=2), axis=1)

        def drawn(position: int) -> np.ndarray:  # 0-based, per resample
            out = np.empty(counts.shape[0])
            for row, ends in enumerate(block_ends):
                b = int(np.searchsorted(ends, position, side="right"))
                before = int(ends[b - 1]) if b else 0
                within = np.cumsum(blocks[row, b * block : (b + 1) * block])
                j = int(np.searchsorted(within, position - before, side="right"))
                out[row] = sorted_r[b * block + j]
            return out

        half = n // 2
        median = drawn(half) if n % 2 else (drawn(half - 1) + drawn(half)) / 2
        return _from_sums({m: sums[:, i] for i, m in enumerate(names)}, n, k, recall_at, median)

    return metrics


def _bootstrap(ranks: Sequence[np.ndarray], k, recall_at, resamples, seed):
    draws: dict[str, list[np.ndarray]] = {}
    n = ranks[0].size
    resamplers = [_resampler(r, k, recall_at) for r in ranks]
    for idx in bootstrap_indices(n, resamples, seed):
        # How often each query was drawn, per resample: one bincount for the whole chunk.
        offsets = np.arange(idx.shape[0])[:, None] * n
        counts = np.bincount((idx + offsets).ravel(), minlength=idx.size).reshape(idx.shape)
        parts = [resample(counts) for resample in resamplers]
        for name in parts[0]:
            value = parts[0][name] if len(parts) == 1 else parts[0][name] - parts[1][name]
            draws.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in draws.items()}


def bootstrap_intervals(
    ranks: np.ndarray,
    k: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric, resampling queries."""
    draws = _bootstrap([np.asarray(ranks)], k, recall_at, resamples, seed)
    tail = (1 - level) / 2 * 100
    return {
        name: tuple(float(q) for q in np.percentile(d, [tail, 100 - tail]))
        for name, d in draws.items()
    }


def paired_bootstrap(
    ranks_a: np.ndarray,
    ranks_b: np.ndarray,
    k: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Difference a − b of every metric on the same resampled queries, with its interval and a
    two-sided bootstrap p-value (twice the smaller share of resampled differences ≤ 0 or ≥ 0)."""
    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    if ranks_a.shape != ranks_b.shape:
        raise ValueError("paired bootstrap needs both models' ranks on the same queries")
    observed_a, observed_b = summarize(ranks_a, k, recall_at), summarize(ranks_b, k, recall_at)
    draws = _bootstrap([ranks_a, ranks_b], k, recall_at, resamples, seed)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, d in draws.items():
        lo, hi = np.percentile(d, [tail, 100 - tail])
        p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
        out[name] = {
            "difference": float(observed_a[name] - observed_b[name]),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "p_value": p,
            "significant": bool(lo > 0 or hi < 0),
        }
    return out
