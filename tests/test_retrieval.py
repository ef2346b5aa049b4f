import numpy as np
import pytest

from clipbench.errors import InputError
from clipbench.retrieval import iter_retrieval, ranks_from_scores, retrieve, topk


def unit(m):
    m = np.asarray(m, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def one_positive(positive, n):
    mask = np.zeros((len(positive), n), bool)
    mask[np.arange(len(positive)), positive] = True
    return mask


def test_similarity_is_cosine_of_normalised_rows():
    texts = unit([[1, 0], [1, 1]])
    images = unit([[1, 0], [0, 1], [-1, 0]])
    block = next(iter_retrieval(texts, images, np.array([0, 1]), np.arange(3), k=2))
    np.testing.assert_allclose(
        block.scores, [[1, 0, -1], [0.70710677, 0.70710677, -0.70710677]], atol=1e-6
    )


def test_text_to_image_ranks_and_topk_hand_computed():
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],  # own image 0 best → rank 1
            [0.9, 0.1, 0.5, 0.3],  # own image 1 worst → rank 4
            [0.2, 0.8, 0.8, 0.1],  # own image 2 tied with image 1 → pessimistic rank 2
            [0.4, 0.4, 0.4, 0.4],  # all tied → rank 4 (no credit for a constant model)
        ],
        dtype=np.float32,
    )
    mask = one_positive([0, 1, 2, 3], 4)
    assert ranks_from_scores(scores, mask).tolist() == [1, 4, 2, 4]
    assert topk(scores, 2, mask).tolist() == [[0, 2], [0, 2], [1, 2], [0, 1]]


def test_image_to_text_with_several_captions_hand_computed():
    # 2 images; captions 0, 1 belong to image 0 and captions 2, 3, 4 to image 1.
    caption_image = np.array([0, 0, 1, 1, 1])
    scores = np.array(
        [
            [0.2, 0.7, 0.9, 0.7, 0.1],  # image 0: best own caption (1) at 0.7; caption 2 above and
            # caption 3 tied → rank 1 + 2 = 3
            [0.3, 0.2, 0.1, 0.6, 0.5],  # image 1: best own (3) at 0.6, nothing else ≥ → rank 1
        ],
        dtype=np.float32,
    )
    mask = np.arange(2)[:, None] == caption_image[None, :]
    assert ranks_from_scores(scores, mask).tolist() == [3, 1]
    # Own captions go after others of equal score, so caption 3 precedes caption 1.
    assert topk(scores, 3, mask).tolist() == [[2, 3, 1], [3, 4, 0]]
    block = next(
        iter_retrieval(
            np.eye(2, dtype=np.float32), scores.T.copy(), np.arange(2), caption_image, k=3
        )
    )
    assert block.rank.tolist() == [3, 1]
    np.testing.assert_allclose(block.positive_score, [0.7, 0.6])


def test_positive_in_topk_iff_rank_at_most_k():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(200, 9)).astype(np.float32)  # many exact ties
    groups = rng.integers(0, 4, size=9)  # candidates in 4 groups, several per group
    query_group = rng.choice(np.unique(groups), size=200)
    mask = query_group[:, None] == groups[None, :]
    rank = ranks_from_scores(scores, mask)
    for k in (1, 3, 5, 9):
        in_list = np.take_along_axis(mask, topk(scores, k, mask), axis=1).any(axis=1)
        np.testing.assert_array_equal(in_list, rank <= k)


def test_topk_orders_by_score_then_candidate_order():
    assert topk(np.array([[0.1, 0.7, 0.3, 0.7, 0.9]]), 4).tolist() == [[4, 1, 3, 2]]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_blocked_equals_dense(direction):
    rng = np.random.default_rng(2)
    images = unit(rng.standard_normal((29, 8)))
    texts = unit(rng.standard_normal((37, 8)))
    caption_image = rng.integers(0, 29, size=37)
    caption_image[:29] = np.arange(29)  # every image has at least one caption
    if direction == "t2i":
        args = (texts, images, caption_image, np.arange(29))
    else:
        args = (images, texts, np.arange(29), caption_image)
    dense = next(iter_retrieval(*args, 5, block_rows=10_000))
    blocks = list(iter_retrieval(*args, 5, block_rows=4))
    np.testing.assert_array_equal(np.concatenate([b.rank for b in blocks]), dense.rank)
    np.testing.assert_array_equal(np.concatenate([b.topk_index for b in blocks]), dense.topk_index)
    mask = args[2][:, None] == args[3][None, :]
    np.testing.assert_array_equal(dense.rank, ranks_from_scores(args[0] @ args[1].T, mask))
    whole = retrieve(*args, 5, block_rows=3)
    np.testing.assert_array_equal(whole.rank, dense.rank)
    np.testing.assert_array_equal(whole.topk_index, dense.topk_index)


@pytest.mark.parametrize("k", [0, -1, 5])
def test_bad_k_is_a_clear_error(k):
    with pytest.raises(InputError, match="top-K"):
        topk(np.zeros((2, 4)), k)
    with pytest.raises(InputError, match="top-K"):
        next(iter_retrieval(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), np.arange(4), k))


def test_query_without_positive_is_refused():
    with pytest.raises(ValueError, match="at least one positive"):
        next(iter_retrieval(np.ones((1, 2)), np.ones((3, 2)), np.array([7]), np.arange(3), 1))


def test_vectorised_topk_equals_the_exact_per_row_sort():
    from clipbench.retrieval import _topk_exact_row

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 40)).astype(np.float32)
    scores[::7, :5] = 1.0  # some rows with ties at the cut, some without
    mask = rng.random((50, 40)) < 0.1
    fast = topk(scores, 6, mask)
    exact = np.stack([_topk_exact_row(scores[r], 6, mask[r]) for r in range(50)])
    np.testing.assert_array_equal(fast, exact)
