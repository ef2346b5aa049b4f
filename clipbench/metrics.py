"""Summary metrics from where each query's best positive lands, their chance levels, and
bootstrap uncertainty.

A query's placement (:class:`QueryRanks`) is how many non-positive candidates score above its
best positive, how many score the same, and how many positives share that score. Ties are
real (identical captions have identical embeddings) and any order among tied candidates is
arbitrary, so by default every metric is its expectation over a uniformly random order of the
tied candidates (McSherry & Najork, ECIR 2008, "Computing information retrieval performance
measures efficiently in the presence of tied scores"); ``pessimistic`` puts the tied
non-positives first, ``optimistic`` last. A model that scores every candidate the same then
sits exactly at chance. One vectorised :func:`summarize` serves the point estimate, every
bootstrap resample and every paired difference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clipbench.errors import InputError

# Resamples drawn per step: bounds memory at (chunk × n_queries) whatever the resample count.
BOOTSTRAP_CHUNK = 50
MEDIAN_BLOCK = 1024  # queries per block when locating a resample's median
TIES = ("expected", "pessimistic", "optimistic")


@dataclass(frozen=True)
class QueryRanks:
    """Per query: ``greater`` non-positives score above its best positive, ``tied``
    non-positives score the same, and ``positives`` positives (the best one included) share
    that score. Arrays of one shape (any leading axes)."""

    greater: np.ndarray
    tied: np.ndarray
    positives: np.ndarray

    @classmethod
    def of(cls, ranks: QueryRanks | np.ndarray) -> QueryRanks:
        """Plain 1-based ranks are placements without ties."""
        if isinstance(ranks, QueryRanks):
            return ranks
        r = np.asarray(ranks, dtype=np.int64)
        return cls(r - 1, np.zeros_like(r), np.ones_like(r))

    @classmethod
    def from_columns(cls, rank, ties, tied_positives) -> QueryRanks:
        """From a hits table's columns: ``rank`` counts the tied non-positives as above."""
        rank, ties = np.asarray(rank, np.int64), np.asarray(ties, np.int64)
        return cls(rank - 1 - ties, ties, np.asarray(tied_positives, np.int64))

    def __getitem__(self, index) -> QueryRanks:
        return QueryRanks(self.greater[index], self.tied[index], self.positives[index])

    @property
    def size(self) -> int:
        return int(self.greater.size)

    def rank(self, ties: str) -> np.ndarray:
        """The rank of the best positive (float64): the expected one over tied orders, or
        with the tied non-positives before it (pessimistic) or after it (optimistic)."""
        g, t, p = (np.asarray(a, np.float64) for a in (self.greater, self.tied, self.positives))
        if ties == "pessimistic":
            return g + t + 1
        if ties == "optimistic":
            return g + 1
        if ties == "expected":
            # The first of p positives among t + p in random order lands at (t+p+1)/(p+1).
            return g + (t + p + 1) / (p + 1)
        raise InputError(f"retrieval.ties is {ties!r}; use one of {list(TIES)}")


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


def _per_query(
    ranks: QueryRanks, k: int, recall_at: Sequence[int], ties: str
) -> dict[str, np.ndarray]:
    """Per query (any leading axes), what the metrics sum over the queries: with ``expected``
    ties each value is its expectation over the tied candidates' random order."""
    cutoffs = {"hit": k, **{f"recall_at_{c}": c for c in recall_at}}
    r = ranks.rank(ties)
    if ties != "expected":
        out = {name: (r <= c).astype(np.float64) for name, c in cutoffs.items()}
        return out | {"reciprocal": 1.0 / r, "rank": r, "points": np.clip(k + 1 - r, 0, None)}
    # Untied queries (nearly all, with float scores) sit at greater + 1; tied ones get their
    # expectations from the distribution of their first positive's place among the tied.
    first = np.asarray(ranks.greater, np.float64) + 1
    out = {name: (first <= c).astype(np.float64) for name, c in cutoffs.items()}
    out |= {"reciprocal": 1.0 / first, "points": np.clip(k + 1 - first, 0, None)}
    flat = {name: value.reshape(-1) for name, value in out.items()}
    for g, t, p, at in _tied_groups(ranks):
        pmf = first_positive_pmf(t + p, p)  # P(first positive at place j), j = 1…t+1
        place = g + np.arange(1, t + 2, dtype=np.float64)
        cdf = np.cumsum(pmf)
        for name, c in cutoffs.items():
            # Exactly 0 or 1 where the cutoff is above or below the whole tied group.
            flat[name][at] = 0.0 if c <= g else 1.0 if c - g > t else cdf[c - g - 1]
        flat["reciprocal"][at] = pmf @ (1.0 / place)
        flat["points"][at] = pmf @ np.clip(k + 1 - place, 0, None)
    return out | {"rank": r}


def _tied_groups(ranks: QueryRanks) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(greater, tied, positives, flat query indices) for each distinct placement of the
    queries with ties: each needs its tied places' distribution once, however many share it."""
    g, t, p = (
        np.asarray(a, np.int64).reshape(-1) for a in (ranks.greater, ranks.tied, ranks.positives)
    )
    tied = np.flatnonzero(t > 0)
    if not tied.size:
        return
    unique, inverse = np.unique(
        np.stack([g[tied], t[tied], p[tied]], axis=1), axis=0, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    for row, (g0, t0, p0) in enumerate(unique.tolist()):
        yield g0, t0, p0, tied[order[starts[row] : starts[row + 1]]]


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


def summarize(
    ranks: QueryRanks | np.ndarray, k: int, recall_at: Sequence[int], ties: str = "expected"
) -> dict[str, np.ndarray]:
    """Every metric over the last axis of ``ranks`` (leading axes: e.g. bootstrap resamples);
    plain integer ranks are untied placements.

    hits@K is the seed study's "score" (a count); the weighted score is the seed's proposal:
    K points for rank 1, K−1 for rank 2, …, 1 for rank K; its share divides by N·K.
    """
    ranks = QueryRanks.of(ranks)
    if ranks.greater.shape[-1] == 0:
        raise InputError("no queries to evaluate")
    per_query = _per_query(ranks, k, recall_at, ties)
    sums = {name: value.sum(-1) for name, value in per_query.items()}
    n = ranks.greater.shape[-1]
    return _from_sums(sums, n, k, recall_at, np.median(per_query["rank"], axis=-1))


def rank_distribution(ranks: QueryRanks, ties: str = "expected") -> tuple[np.ndarray, np.ndarray]:
    """(rank, number of queries there), over the ranks that occur: with ``expected`` ties a
    tied query spreads over its tied places with its probabilities (so the counts add up to
    the queries, and their cumulative share at K is R@K)."""
    if ties != "expected":
        values, counts = np.unique(ranks.rank(ties).astype(np.int64), return_counts=True)
        return values, counts.astype(np.float64)
    greater = np.asarray(ranks.greater, np.int64).reshape(-1)
    untied = np.asarray(ranks.tied).reshape(-1) == 0
    mass = np.bincount(greater[untied] + 1).astype(np.float64)
    for g, t, p, at in _tied_groups(ranks):
        top = g + t + 2
        if mass.size < top:
            mass = np.concatenate([mass, np.zeros(top - mass.size)])
        mass[g + 1 : top] += at.size * first_positive_pmf(t + p, p)
    values = np.flatnonzero(mass)
    return values, mass[values]


def first_positive_pmf(n: int, m: int) -> np.ndarray:
    """P(rank = r), r = 1…n−m+1, of the first of m positives among n candidates in random order.

    P(r) = C(n−r, m−1) / C(n, m), built by its ratio P(r+1)/P(r) = (n−r−m+1)/(n−r).
    """
    if not 1 <= m <= n:
        raise ValueError(f"need 1 ≤ positives ≤ candidates, got {m} of {n}")
    r = np.arange(1, n - m + 1, dtype=np.float64)
    ratios = (n - r - m + 1) / (n - r)
    return (m / n) * np.concatenate([[1.0], np.cumprod(ratios)])


def all_tied(n_candidates: int, n_positives: np.ndarray) -> QueryRanks:
    """The placements of a model that gives every candidate the same score."""
    positives = np.asarray(n_positives, dtype=np.int64)
    return QueryRanks(np.zeros_like(positives), n_candidates - positives, positives)


def chance_metrics(
    n_candidates: int, n_positives: np.ndarray, k: int, recall_at: Sequence[int]
) -> dict[str, float]:
    """Expected metrics of a model that ranks candidates uniformly at random: those of one
    that ties every candidate, averaged over the tied orders, so such a model sits exactly at
    chance. The median rank is the median over queries of each one's expected rank.

    E.g. text→image hits@5 over 833 captions and 833 images: 833 · 5/833 = 5.
    """
    for m in np.unique(n_positives):
        if not 1 <= m <= n_candidates:
            raise ValueError(f"need 1 ≤ positives ≤ candidates, got {m} of {n_candidates}")
    value = summarize(all_tied(n_candidates, n_positives), k, recall_at, "expected")
    return {name: float(v) for name, v in value.items()}


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Query indices of each resample, in chunks; the same seed gives the same resamples, so
    every model (and every pair of models) is resampled on identical query sets."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        yield rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))


def _resampler(ranks: QueryRanks, k: int, recall_at: Sequence[int], ties: str):
    """Every metric on each resample given by ``counts`` (int64, resamples × queries: how
    often each query was drawn), as :func:`summarize` computes it on the drawn queries: the
    sums as one matrix product, the median from the counts in rank order. What depends on the
    placements alone is prepared once, for every chunk of resamples."""
    per_query = _per_query(ranks, k, recall_at, ties)
    r = per_query["rank"]
    n = r.size
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


def _bootstrap(ranks: Sequence[QueryRanks], k, recall_at, resamples, seed, ties="expected"):
    draws: dict[str, list[np.ndarray]] = {}
    n = ranks[0].size
    resamplers = [_resampler(r, k, recall_at, ties) for r in ranks]
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
    ranks: QueryRanks | np.ndarray,
    k: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
    level: float = 0.95,
    ties: str = "expected",
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric, resampling queries."""
    draws = _bootstrap([QueryRanks.of(ranks)], k, recall_at, resamples, seed, ties)
    tail = (1 - level) / 2 * 100
    return {
        name: tuple(float(q) for q in np.percentile(d, [tail, 100 - tail]))
        for name, d in draws.items()
    }


def paired_bootstrap(
    ranks_a: QueryRanks | np.ndarray,
    ranks_b: QueryRanks | np.ndarray,
    k: int,
    recall_at: Sequence[int],
    resamples: int,
    seed: int,
    level: float = 0.95,
    ties: str = "expected",
) -> dict[str, dict[str, float]]:
    """Difference a − b of every metric on the same resampled queries, with its interval and a
    two-sided bootstrap p-value (twice the smaller share of resampled differences ≤ 0 or ≥ 0)."""
    ranks_a, ranks_b = QueryRanks.of(ranks_a), QueryRanks.of(ranks_b)
    if ranks_a.greater.shape != ranks_b.greater.shape:
        raise ValueError("paired bootstrap needs both models' ranks on the same queries")
    observed_a = summarize(ranks_a, k, recall_at, ties)
    observed_b = summarize(ranks_b, k, recall_at, ties)
    draws = _bootstrap([ranks_a, ranks_b], k, recall_at, resamples, seed, ties)
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


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error
    rate under any dependence): the i-th smallest becomes max over j ≤ i of min(1, (m − j + 1)
    p_(j)), in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (p.size - np.arange(p.size)) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
