import numpy as np
import pytest

from clipbench.errors import InputError
from clipbench.retrieval import (
    iter_retrieval,
    ranks_from_scores,
    retrieval_metrics,
    topk,
)


def unit(m):
    m = np.asarray(m, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_similarity_is_cosine_of_normalised_rows():
    texts = unit([[1, 0], [1, 1]])
    images = unit([[1, 0], [0, 1], [-1, 0]])
    block = next(iter_retrieval(texts, images, np.array([0, 1]), k=2))
    np.testing.assert_allclose(
        block.scores, [[1, 0, -1], [0.70710677, 0.70710677, -0.70710677]], atol=1e-6
    )


def test_ranks_and_topk_hand_computed():
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],  # own image 0 best → rank 1
            [0.9, 0.1, 0.5, 0.3],  # own image 1 worst → rank 4
            [0.2, 0.8, 0.8, 0.1],  # own image 2 tied with image 1 → pessimistic rank 2
            [0.4, 0.4, 0.4, 0.4],  # all tied → rank 4 (no credit for a constant model)
        ],
        dtype=np.float32,
    )
    positive = np.array([0, 1, 2, 3])
    assert ranks_from_scores(scores, positive).tolist() == [1, 4, 2, 4]
    idx = topk(scores, 2, positive)
    assert idx.tolist() == [[0, 2], [0, 2], [1, 2], [0, 1]]


def test_own_image_in_topk_iff_rank_at_most_k():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(200, 9)).astype(np.float32)  # many exact ties
    positive = rng.integers(0, 9, size=200)
    rank = ranks_from_scores(scores, positive)
    for k in (1, 3, 5, 9):
        in_list = (topk(scores, k, positive) == positive[:, None]).any(axis=1)
        np.testing.assert_array_equal(in_list, rank <= k)


def test_topk_orders_by_score_then_dataset_order():
    scores = np.array([[0.1, 0.7, 0.3, 0.7, 0.9]])
    assert topk(scores, 4).tolist() == [[4, 1, 3, 2]]


def test_blocked_equals_dense():
    rng = np.random.default_rng(2)
    texts = unit(rng.standard_normal((37, 8)))
    images = unit(rng.standard_normal((29, 8)))
    positive = rng.integers(0, 29, size=37)
    dense = next(iter_retrieval(texts, images, positive, 5, block_rows=10_000))
    blocks = list(iter_retrieval(texts, images, positive, 5, block_rows=4))
    assert len(blocks) == 10
    np.testing.assert_array_equal(np.concatenate([b.rank for b in blocks]), dense.rank)
    np.testing.assert_array_equal(np.concatenate([b.topk_index for b in blocks]), dense.topk_index)
    np.testing.assert_allclose(np.concatenate([b.scores for b in blocks]), dense.scores, atol=1e-6)
    np.testing.assert_array_equal(dense.rank, ranks_from_scores(texts @ images.T, positive))


def test_metrics_hand_computed():
    m = retrieval_metrics(np.array([1, 2, 6, 11]), k=5, recall_at=[1, 5, 10])
    assert m["n"] == 4 and m["k"] == 5
    assert m["hits_at_k"] == 2 and m["accuracy"] == 0.5
    assert m["recall_at_1"] == 0.25 and m["recall_at_5"] == 0.5 and m["recall_at_10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)
    assert m["mean_rank"] == 5.0 and m["median_rank"] == 4.0


@pytest.mark.parametrize("k", [0, -1, 5])
def test_bad_k_is_a_clear_error(k):
    scores = np.zeros((2, 4))
    with pytest.raises(InputError, match="top-K"):
        topk(scores, k)
    with pytest.raises(InputError, match="top-K"):
        next(iter_retrieval(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), k))
