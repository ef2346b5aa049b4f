import numpy as np
import pytest

from clipbench import native
from clipbench.errors import InputError
from clipbench.metrics import all_tied
from clipbench.retrieval import placement_from_scores, ranks_from_scores, retrieve_both, topk


def unit(m):
    m = np.asarray(m, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def one_positive(positive, n):
    mask = np.zeros((len(positive), n), bool)
    mask[np.arange(len(positive)), positive] = True
    return mask


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
    placement = placement_from_scores(scores, mask)  # one above image 0's best, one tied
    assert placement.greater.tolist() == [1, 0] and placement.tied.tolist() == [1, 0]
    assert placement.positives.tolist() == [1, 1]
    # Own captions go after others of equal score, so caption 3 precedes caption 1.
    assert topk(scores, 3, mask).tolist() == [[2, 3, 1], [3, 4, 0]]
    # The same through the tiled pass: rows of `scores` are images, so images = I, texts = Sᵀ.
    t2i, i2t = retrieve_both(scores.T.copy(), np.eye(2, dtype=np.float32), caption_image, k=2)
    assert i2t.rank.tolist() == [3, 1] and i2t.ties.tolist() == [1, 0]
    assert i2t.topk_index.tolist() == [[2, 3], [3, 4]]
    np.testing.assert_allclose(i2t.positive_score, [0.7, 0.6])
    np.testing.assert_allclose(t2i.positive_score, [0.2, 0.7, 0.1, 0.6, 0.5])


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


def dense_reference(texts, images, caption_image, k):
    """Both directions from the whole matrix at once, with the module's reference helpers."""
    scores = texts @ images.T
    t2i_mask = caption_image[:, None] == np.arange(len(images))[None, :]
    results = []
    for s, mask in ((scores, t2i_mask), (scores.T.copy(), t2i_mask.T.copy())):
        idx = topk(s, k, mask)
        best = np.where(mask, s, -np.inf).max(axis=1)
        place = placement_from_scores(s, mask)
        results.append(
            (ranks_from_scores(s, mask), best, idx, np.take_along_axis(s, idx, 1), place)
        )
    return results


@pytest.mark.parametrize("kernel", ["native", "torch"])
@pytest.mark.parametrize("tile_scores", [1, 7, 60, 1536, 1 << 22])
@pytest.mark.parametrize("ties", [False, True])
def test_tiled_single_pass_equals_dense_reference(tile_scores, ties, kernel):
    # 53 × 29 = 1537 scores: from 1536 on, one tile: the dense numpy path itself.
    rng = np.random.default_rng(2)
    if ties:  # small integer vectors: exact dot products in any summation order, many ties
        images = rng.integers(-1, 2, size=(29, 3)).astype(np.float32)
        texts = rng.integers(-1, 2, size=(53, 3)).astype(np.float32)
        texts[:3] = images[0]  # captions identical to their image and to each other
    else:
        images = unit(rng.standard_normal((29, 8)))
        texts = unit(rng.standard_normal((53, 8)))
    caption_image = rng.integers(0, 29, size=53)
    caption_image[:3] = 0
    caption_image[3 + rng.permutation(50)[:28]] = np.arange(1, 29)  # every image has a caption
    got = retrieve_both(texts, images, caption_image, 5, tile_scores=tile_scores, kernel=kernel)
    for result, (rank, best, idx, top_score, place) in zip(
        got, dense_reference(texts, images, caption_image, 5), strict=True
    ):
        np.testing.assert_array_equal(result.rank, rank)
        np.testing.assert_array_equal(result.ties, place.tied)
        np.testing.assert_array_equal(result.tied_positives, place.positives)
        assert (result.ties > 0).any() == ties
        np.testing.assert_array_equal(result.topk_index, idx)
        np.testing.assert_allclose(result.positive_score, best, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.topk_score, top_score, rtol=0, atol=1e-6)


def test_a_constant_model_ranks_every_query_last():
    texts, images = np.ones((6, 4), np.float32), np.ones((3, 4), np.float32)
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    t2i, i2t = retrieve_both(texts, images, caption_image, 2, tile_scores=2)
    assert t2i.rank.tolist() == [3] * 6
    assert i2t.rank.tolist() == [5] * 3  # 4 other captions tie with the best own one
    assert t2i.topk_index.tolist() == [[1, 2], [1, 2], [0, 2], [0, 2], [0, 1], [0, 1]]
    assert i2t.topk_index.tolist() == [[2, 3], [0, 1], [0, 1]]


@pytest.mark.parametrize("tile_scores", [2, 1 << 22])
def test_a_constant_model_is_placed_all_tied(tile_scores):
    """Every candidate tied with every positive: the placement whose expected metrics are the
    chance levels (clipbench.metrics.chance_metrics)."""
    texts, images = np.ones((7, 4), np.float32), np.ones((3, 4), np.float32)
    caption_image = np.array([0, 0, 1, 1, 1, 2, 2])
    t2i, i2t = retrieve_both(texts, images, caption_image, 2, tile_scores=tile_scores)
    for result, want in (
        (t2i, all_tied(3, np.ones(7, np.int64))),
        (i2t, all_tied(7, np.bincount(caption_image))),
    ):
        for got_counts, want_counts in zip(
            (result.placement.greater, result.ties, result.tied_positives),
            (want.greater, want.tied, want.positives),
            strict=True,
        ):
            np.testing.assert_array_equal(got_counts, want_counts)


@pytest.mark.parametrize("k", [0, -1, 5])
def test_bad_k_is_a_clear_error(k):
    with pytest.raises(InputError, match="top-K"):
        topk(np.zeros((2, 4)), k)
    with pytest.raises(InputError, match="top-K"):
        retrieve_both(np.ones((4, 3)), np.ones((4, 3)), np.arange(4), k)


def test_query_without_positive_is_refused():
    with pytest.raises(ValueError, match="at least one positive"):
        retrieve_both(np.ones((2, 2)), np.ones((3, 2)), np.array([0, 1]), 1)


def test_vectorised_topk_equals_the_exact_per_row_sort():
    from clipbench.retrieval import _topk_exact_row

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 40)).astype(np.float32)
    scores[::7, :5] = 1.0  # some rows with ties at the cut, some without
    mask = rng.random((50, 40)) < 0.1
    fast = topk(scores, 6, mask)
    exact = np.stack([_topk_exact_row(scores[r], 6, mask[r]) for r in range(50)])
    np.testing.assert_array_equal(fast, exact)


def native_tile_pass():
    """The C tile pass, which must build wherever there is a C compiler (as in CI)."""
    import shutil

    from clipbench import native

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the hits stage keeps its torch path here")
    lib = native.load("tile_pass", OPENMP)
    assert lib is not None, "a C compiler is here, but the tile pass did not build"
    return lib


OPENMP = native.OPENMP_FLAGS


OPENMP_RUNTIMES = """
import torch
from clipbench import native

def runtimes():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "libgomp" in line})

torch.ones(64, 64) @ torch.ones(64, 64)  # torch's OpenMP runtime loaded and started
before = runtimes()
lib = native.load("tile_pass", ("-fopenmp",))
print(lib.built_with_openmp(), before == runtimes(), before, runtimes())
"""


def test_the_tile_pass_runs_on_torchs_openmp_threads_where_gcc_builds_it():
    """Built with -fopenmp, the pass must bind to the libgomp torch loaded, not bring a second
    OpenMP runtime whose threads would compete with torch's."""
    import subprocess
    import sys

    native_tile_pass()
    version = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout
    if "gcc" not in version.lower() and "free software foundation" not in version.lower():
        pytest.skip("not GCC: OpenMP may be missing, and Python threads split the pass")
    done = subprocess.run(
        [sys.executable, "-c", OPENMP_RUNTIMES], capture_output=True, text=True, check=True
    )
    openmp, same, *_ = done.stdout.split(maxsplit=2)
    assert openmp == "1", done.stdout
    assert same == "True", done.stdout  # loading it mapped no other libgomp


RESULT_FIELDS = ("rank", "positive_score", "topk_index", "topk_score", "ties", "tied_positives")


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("tile_scores", [7, 60, 500])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("openmp", [True, False])
def test_native_tile_pass_equals_the_torch_path_bit_for_bit(
    threads, tile_scores, ties, openmp, monkeypatch
):
    """The C pass (counts and top-K merge in one read of each tile) against the torch
    reductions it replaces on CPU: every field identical, with ties at the top-K cut, several
    captions per image in shuffled order, tiles narrower than k, and parts of uneven size,
    split over OpenMP threads or over Python threads."""
    import torch

    lib = native_tile_pass()
    if not openmp:
        monkeypatch.setattr(lib, "built_with_openmp", lambda: 0)
    rng = np.random.default_rng(5)
    if ties:
        images = rng.integers(-1, 2, size=(41, 3)).astype(np.float32)
        texts = rng.integers(-1, 2, size=(67, 3)).astype(np.float32)
    else:
        images = unit(rng.standard_normal((41, 8)))
        texts = unit(rng.standard_normal((67, 8)))
    caption_image = np.concatenate([rng.permutation(41), rng.integers(0, 41, size=26)])
    rng.shuffle(caption_image)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Both under the same thread count: the tile GEMM is torch's in both paths, and its
        # summation order may follow the threads (AMD Zen 4: scores 1 ulp apart between 2 and
        # 3); what this compares is only what reads the tile.
        native = retrieve_both(texts, images, caption_image, 6, tile_scores, kernel="native")
        reference = retrieve_both(texts, images, caption_image, 6, tile_scores, kernel="torch")
    finally:
        torch.set_num_threads(before)
    for got, want in zip(native, reference, strict=True):
        for field in RESULT_FIELDS:
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    for got, (rank, _, idx, _, place) in zip(
        native, dense_reference(texts, images, caption_image, 6), strict=True
    ):
        np.testing.assert_array_equal(got.rank, rank)
        np.testing.assert_array_equal(got.ties, place.tied)
        np.testing.assert_array_equal(got.topk_index, idx)


def test_native_kernels_are_built_once_per_cpu_and_can_be_turned_off(tmp_path, monkeypatch):
    from clipbench import native

    native_tile_pass()
    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("tile_pass", OPENMP) is not None
        (built,) = (tmp_path / "native").glob("tile_pass-*.so")
        stamp = built.stat().st_mtime_ns
        native.load.cache_clear()
        assert native.load("tile_pass", OPENMP) is not None
        assert built.stat().st_mtime_ns == stamp  # loaded from the cache, not rebuilt
        native.load.cache_clear()
        monkeypatch.setenv("CLIPBENCH_NATIVE", "0")
        assert native.load("tile_pass", OPENMP) is None
        rng = np.random.default_rng(6)
        texts, images = unit(rng.standard_normal((9, 4))), unit(rng.standard_normal((9, 4)))
        with pytest.raises(RuntimeError, match="native tile pass"):
            retrieve_both(texts, images, np.arange(9), 2, tile_scores=10, kernel="native")
        auto = retrieve_both(texts, images, np.arange(9), 2, tile_scores=10)  # torch path
        want_rank = dense_reference(texts, images, np.arange(9), 2)[0][0]
        np.testing.assert_array_equal(auto[0].rank, want_rank)
        native.load.cache_clear()
        monkeypatch.setenv("CLIPBENCH_NATIVE", "1")
        monkeypatch.setenv("CC", "false")  # a compiler that fails: a warning, then torch
        monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path / "other"))
        with pytest.warns(UserWarning, match="tile_pass unavailable"):
            assert native.load("tile_pass", OPENMP) is None
    finally:
        native.load.cache_clear()


def test_a_native_kernel_is_rebuilt_when_a_header_it_includes_changes(tmp_path, monkeypatch):
    import shutil

    from clipbench import native

    sources = tmp_path / "src"
    sources.mkdir()
    for name in ("tile_pass.c", "native.h"):
        shutil.copy(native.HERE / name, sources / name)
    monkeypatch.setattr(native, "HERE", sources)
    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path / "cache"))
    native.load.cache_clear()
    try:
        assert native.load("tile_pass") is not None
        header = sources / "native.h"
        header.write_text(header.read_text() + "\n/* changed */\n")
        native.load.cache_clear()
        assert native.load("tile_pass") is not None
        assert len(list((tmp_path / "cache" / "native").glob("tile_pass-*.so"))) == 2
    finally:
        native.load.cache_clear()


@pytest.mark.parametrize("tile_scores", [10, 10_000])  # tiled, and dense in one tile
def test_an_unknown_tile_kernel_is_refused_whatever_the_size(tile_scores):
    rng = np.random.default_rng(7)
    texts, images = unit(rng.standard_normal((9, 4))), unit(rng.standard_normal((9, 4)))
    with pytest.raises(ValueError, match="unknown tile kernel 'fast'"):
        retrieve_both(texts, images, np.arange(9), 2, tile_scores=tile_scores, kernel="fast")
