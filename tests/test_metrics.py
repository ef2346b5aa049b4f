import itertools
import math

import numpy as np
import pytest

from clipbench.metrics import (
    bootstrap_intervals,
    chance_metrics,
    first_positive_pmf,
    metric_names,
    paired_bootstrap,
    summarize,
)


def test_summary_hand_computed():
    m = summarize(np.array([1, 2, 6, 11]), k=5, recall_at=[1, 5, 10])
    assert m["hits_at_k"] == 2 and m["accuracy"] == 0.5
    assert m["recall_at_1"] == 0.25 and m["recall_at_5"] == 0.5 and m["recall_at_10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)
    assert m["mean_rank"] == 5.0 and m["median_rank"] == 4.0
    # The seed's rank-weighted score: K points for rank 1, K−1 for rank 2, …, 1 for rank K.
    assert m["weighted_score"] == 5 + 4
    assert m["weighted_score_share"] == pytest.approx(9 / (4 * 5))
    assert list(m) == metric_names([1, 5, 10])


def test_summary_is_vectorised_over_resamples():
    ranks = np.array([[1, 2, 3], [4, 5, 6]])
    m = summarize(ranks, k=2, recall_at=[1])
    assert m["hits_at_k"].tolist() == [2, 0] and m["median_rank"].tolist() == [2, 5]


def test_chance_one_positive_is_uniform():
    c = chance_metrics(833, np.ones(833, np.int64), k=5, recall_at=[1, 5, 10])
    assert c["hits_at_k"] == pytest.approx(5.0)  # the seed's baseline scored 6
    assert c["recall_at_1"] == pytest.approx(1 / 833)
    assert c["recall_at_10"] == pytest.approx(10 / 833)
    assert c["mean_rank"] == pytest.approx(417.0)
    assert c["median_rank"] == 417
    assert c["mrr"] == pytest.approx(sum(1 / r for r in range(1, 834)) / 833)
    assert c["weighted_score"] == pytest.approx(833 * (5 + 4 + 3 + 2 + 1) / 833)


def test_chance_several_positives_matches_enumeration():
    n, m = 7, 3
    ranks = []  # best positive's rank over every placement of the 3 positives
    for positives in itertools.combinations(range(n), m):
        ranks.append(min(positives) + 1)
    pmf = first_positive_pmf(n, m)
    assert pmf.sum() == pytest.approx(1.0)
    for r in range(1, n - m + 2):
        assert pmf[r - 1] == pytest.approx(ranks.count(r) / math.comb(n, m))
    c = chance_metrics(n, np.array([m, 1]), k=2, recall_at=[1])
    p_multi = 1 - math.comb(n - m, 2) / math.comb(n, 2)
    assert c["accuracy"] == pytest.approx((p_multi + 2 / n) / 2)
    assert c["mean_rank"] == pytest.approx(((n + 1) / (m + 1) + (n + 1) / 2) / 2)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    ranks = np.random.default_rng(0).integers(1, 50, 300)
    a = bootstrap_intervals(ranks, 5, [1, 5], resamples=200, seed=7)
    b = bootstrap_intervals(ranks, 5, [1, 5], resamples=200, seed=7)
    c = bootstrap_intervals(ranks, 5, [1, 5], resamples=200, seed=8)
    assert a == b and a != c
    point = summarize(ranks, 5, [1, 5])
    for name, (lo, hi) in a.items():
        assert lo <= point[name] <= hi, name
    # Width shrinks like 1/sqrt(n): 4× the queries, about half the width.
    wide = a["accuracy"][1] - a["accuracy"][0]
    more = bootstrap_intervals(np.tile(ranks, 4), 5, [1, 5], resamples=200, seed=7)
    assert 0.35 < (more["accuracy"][1] - more["accuracy"][0]) / wide < 0.65


def test_paired_bootstrap_detects_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    base = rng.integers(1, 100, 400)
    better = np.maximum(1, base - 40)  # the same queries, ranked clearly better
    diff = paired_bootstrap(better, base, 5, [1, 5, 10], resamples=300, seed=0)
    assert diff["recall_at_10"]["difference"] > 0 and diff["recall_at_10"]["significant"]
    assert diff["recall_at_10"]["p_value"] < 0.01
    assert diff["mean_rank"]["ci_high"] < 0
    same = paired_bootstrap(base, base.copy(), 5, [1], resamples=100, seed=0)
    assert same["mrr"]["difference"] == 0 and not same["mrr"]["significant"]
    assert same["mrr"]["p_value"] == 1.0
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap(base, base[:-1], 5, [1], resamples=10, seed=0)


@pytest.mark.parametrize("n", [40, 41])
@pytest.mark.parametrize("block", [1024, 8, 1])
def test_bootstrap_from_draw_counts_equals_summarizing_the_drawn_ranks(n, block, monkeypatch):
    """Oracle: the counts-and-matrix-product bootstrap against summarize() on r[idx], with
    the median located through one block or many."""
    from clipbench import metrics
    from clipbench.metrics import _bootstrap, bootstrap_indices, summarize

    monkeypatch.setattr(metrics, "MEDIAN_BLOCK", block)
    ranks = np.random.default_rng(n).integers(1, 30, size=n)
    got = _bootstrap([ranks], 5, [1, 5, 10], 120, seed=3)
    want: dict[str, list] = {}
    for idx in bootstrap_indices(n, 120, seed=3):
        for name, value in summarize(ranks[idx], 5, [1, 5, 10]).items():
            want.setdefault(name, []).append(value)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], np.concatenate(values), rtol=1e-12, err_msg=name)
