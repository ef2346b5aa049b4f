import itertools
import math

import numpy as np
import pytest

from clipbench.metrics import (
    QueryRanks,
    all_tied,
    bootstrap_intervals,
    chance_metrics,
    first_positive_pmf,
    holm,
    metric_names,
    paired_bootstrap,
    rank_distribution,
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
    rng = np.random.default_rng(n)
    ranks = QueryRanks(
        rng.integers(0, 30, n), rng.integers(0, 4, n) * (rng.random(n) < 0.3), rng.integers(1, 3, n)
    )
    got = _bootstrap([ranks], 5, [1, 5, 10], 120, seed=3)
    want: dict[str, list] = {}
    for idx in bootstrap_indices(n, 120, seed=3):
        for name, value in summarize(ranks[idx], 5, [1, 5, 10]).items():
            want.setdefault(name, []).append(value)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], np.concatenate(values), rtol=1e-12, err_msg=name)


def one(greater, tied, positives) -> QueryRanks:
    return QueryRanks(np.array([greater]), np.array([tied]), np.array([positives]))


def test_tie_aware_metrics_hand_computed_across_the_top_k_boundary():
    """One non-positive above, two tied with the single positive: it lands at 2, 3 or 4 with
    probability 1/3 each, across K = 2."""
    m = summarize(one(1, 2, 1), k=2, recall_at=[1, 2, 3, 5])
    assert m["recall_at_1"] == 0 and m["recall_at_5"] == 1
    assert m["recall_at_2"] == pytest.approx(1 / 3) and m["recall_at_3"] == pytest.approx(2 / 3)
    assert m["hits_at_k"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert m["mean_rank"] == pytest.approx(3.0) and m["median_rank"] == pytest.approx(3.0)
    assert m["weighted_score"] == pytest.approx(1 / 3)  # 1 point at rank 2, none below
    pessimistic = summarize(one(1, 2, 1), 2, [1, 2, 3, 5], ties="pessimistic")
    optimistic = summarize(one(1, 2, 1), 2, [1, 2, 3, 5], ties="optimistic")
    assert pessimistic["mean_rank"] == 4 and pessimistic["recall_at_3"] == 0
    assert optimistic["mean_rank"] == 2 and optimistic["recall_at_2"] == 1


def test_tie_aware_metrics_with_several_tied_positives():
    """Two positives and two non-positives all tied at the top: the first positive is first
    with p 2/4, second with 2/4 · 2/3, third with 2/4 · 1/3."""
    m = summarize(one(0, 2, 2), k=1, recall_at=[1, 2, 3])
    assert m["recall_at_1"] == pytest.approx(1 / 2)
    assert m["recall_at_2"] == pytest.approx(5 / 6)
    assert m["recall_at_3"] == 1
    assert m["mrr"] == pytest.approx(1 / 2 + 1 / 3 / 2 + 1 / 6 / 3)
    assert m["mean_rank"] == pytest.approx(5 / 3)
    # Against enumerating every order of the four tied candidates.
    places = [
        min(o.index("p1"), o.index("p2")) + 1
        for o in itertools.permutations(["p1", "p2", "n1", "n2"])
    ]
    assert m["mrr"] == pytest.approx(np.mean([1 / r for r in places]))
    assert m["recall_at_2"] == pytest.approx(np.mean([r <= 2 for r in places]))


def test_untied_placements_are_plain_ranks():
    ranks = np.array([1, 2, 6, 11])
    for ties in ("expected", "pessimistic", "optimistic"):
        assert summarize(ranks, 5, [1, 5], ties) == summarize(QueryRanks.of(ranks), 5, [1, 5], ties)
    with pytest.raises(Exception, match="retrieval.ties"):
        summarize(ranks, 5, [1], ties="random")


def test_a_model_tying_everything_sits_exactly_at_chance():
    n_positives = np.array([1, 2, 5, 5, 3])
    value = summarize(all_tied(12, n_positives), 5, [1, 5, 10])
    assert {k: float(v) for k, v in value.items()} == chance_metrics(12, n_positives, 5, [1, 5, 10])
    # …and chance itself is the uniform-random expectation, computed independently.
    for m, n in ((1, 12), (5, 12)):
        single = chance_metrics(n, np.array([m]), 5, [1, 5, 10])
        assert single["recall_at_5"] == pytest.approx(1 - math.comb(n - m, 5) / math.comb(n, 5))
        assert single["mean_rank"] == pytest.approx((n + 1) / (m + 1))


def test_rank_distribution_spreads_tied_queries_and_adds_up_to_recall():
    ranks = QueryRanks(np.array([0, 1, 0, 3]), np.array([0, 2, 3, 0]), np.array([1, 1, 2, 1]))
    values, counts = rank_distribution(ranks)
    assert counts.sum() == pytest.approx(4)
    m = summarize(ranks, 2, [1, 2, 3, 4])
    for cutoff in (1, 2, 3, 4):
        assert counts[values <= cutoff].sum() / 4 == pytest.approx(m[f"recall_at_{cutoff}"])
    values, counts = rank_distribution(ranks, "pessimistic")
    assert values.tolist() == [1, 4] and counts.tolist() == [1, 3]


def test_holm_hand_worked():
    # Sorted 0.005, 0.01, 0.03, 0.04 → × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running max.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0
