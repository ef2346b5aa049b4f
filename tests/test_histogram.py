import numpy as np
import pytest

from clipbench.histogram import histogram_table, kde_table


def test_counts_sum_to_n_and_density_integrates_to_one():
    values = np.random.default_rng(0).uniform(-0.3, 0.6, 833)
    values[:3] = [1.0000001, -1.0, 1.0]  # float noise past ±1 stays in the outer bins
    table = histogram_table(values, 200, -1.0, 1.0)
    assert table.num_rows == 200
    assert table["count"].to_numpy().sum() == 833
    widths = table["bin_end"].to_numpy() - table["bin_start"].to_numpy()
    np.testing.assert_allclose(widths, 0.01)
    assert (table["density"].to_numpy() * widths).sum() == pytest.approx(1.0, abs=1e-12)
    assert table["count"][0].as_py() == 1 and table["count"][-1].as_py() == 2


def test_hand_counts():
    table = histogram_table(np.array([0.0, 0.1, 0.1, 0.9]), 2, 0.0, 1.0)
    assert table["count"].to_pylist() == [3, 1]
    assert table["density"].to_pylist() == [1.5, 0.5]


def test_kde_is_a_density():
    values = np.random.default_rng(1).normal(0.3, 0.05, 500)
    table = kde_table(values)
    x, y = table["similarity"].to_numpy(), table["density"].to_numpy()
    assert np.trapezoid(y, x) > 0.99
    assert abs(x[np.argmax(y)] - 0.3) < 0.03


def test_rank_cdf():
    from clipbench.histogram import rank_cdf_table

    table = rank_cdf_table(np.array([3, 1, 1, 7]))
    assert table["rank"].to_pylist() == [1, 3, 7]
    assert table["count"].to_pylist() == [2, 1, 1]
    assert table["cdf"].to_pylist() == [0.5, 0.75, 1.0]


def test_rank_cdf_of_fractional_counts_ends_at_exactly_one():
    """Tied queries spread over their places as thirds: summed in another order than the
    running sum (numpy's sum is pairwise), the total differs from it in the last bit."""
    from clipbench.histogram import rank_cdf_table

    counts = np.full(16, 1 / 3)
    assert np.cumsum(counts)[-1] != counts.sum()  # the case this test is about
    cdf = rank_cdf_table(np.arange(1, 17), counts)["cdf"].to_numpy()
    assert cdf[-1] == 1.0 and np.all(np.diff(cdf) > 0)


@pytest.mark.parametrize("dense", [True, False])
def test_sampled_non_matched_pairs_are_other_images_scored_exactly(monkeypatch, dense):
    """Above max_pairs the pairs are a seeded sample: never a caption's own image, each scored
    as its cosine, whether read off the whole matrix or gathered in bounded chunks."""
    from types import SimpleNamespace

    from clipbench.stages import distributions

    rng = np.random.default_rng(1)
    unit = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    emb = SimpleNamespace(
        text_emb=unit(rng.standard_normal((30, 6))),
        image_emb=unit(rng.standard_normal((12, 6))),
        caption_image=rng.integers(0, 12, 30),
    )
    if not dense:
        monkeypatch.setattr(distributions, "TILE_SCORES", 1)
        monkeypatch.setattr(distributions, "PAIR_CHUNK", 7)
    got = distributions.non_matched_scores(emb, 50, seed=3)
    matrix = emb.text_emb @ emb.image_emb.T
    sample = np.random.default_rng(3)
    text = sample.integers(0, 30, 50)
    image = sample.integers(0, 11, 50)
    image += image >= emb.caption_image[text]
    assert (image != emb.caption_image[text]).all()
    np.testing.assert_allclose(got, matrix[text, image], rtol=0, atol=1e-6)
    assert got.shape == (50,)


def test_kde_equals_the_float64_sum_of_gaussians():
    values = np.random.default_rng(2).normal(0.2, 0.1, 70_000)  # more than one chunk
    table = kde_table(values, points=64)
    x, y = table["similarity"].to_numpy(), table["density"].to_numpy()
    h = max(values.std(ddof=1) * values.size ** (-1 / 5), 1e-3)
    want = np.exp(-0.5 * ((x[:, None] - values[None, :]) / h) ** 2).sum(1)
    want /= values.size * h * np.sqrt(2 * np.pi)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-6 * want.max())
