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
