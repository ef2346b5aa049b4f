import numpy as np
import pytest

from clipbench.errors import InputError
from clipbench.ridge import CrossFitRidge, fit_ridge, group_folds, select_alpha


def test_fit_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    w = rng.standard_normal((6, 3))
    y = x @ w + 2.0
    ridge_map = fit_ridge(x, y, alpha=1e-8)
    np.testing.assert_allclose(ridge_map.weight, w, atol=1e-6)
    np.testing.assert_allclose(ridge_map(x), y, atol=1e-6)


def test_group_folds_keep_groups_together_and_balance():
    groups = np.repeat(np.arange(23), [1, 2, 3] * 7 + [1, 1])
    fold = group_folds(groups, 5, seed=0)
    for g in np.unique(groups):
        assert np.unique(fold[groups == g]).size == 1
    per_fold = np.bincount([fold[groups == g][0] for g in np.unique(groups)])
    assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(fold, group_folds(groups, 5, seed=0))
    with pytest.raises(InputError, match="at least 5 images"):
        group_folds(np.arange(3), 5, 0)


def test_cross_fitting_never_scores_a_row_with_a_map_that_saw_it():
    # Each image's features are a one-hot code: a map fitted on an image's rows can reproduce
    # its target exactly, a map fitted without them can only predict the training mean.
    n, captions = 30, 2
    groups = np.repeat(np.arange(n), captions)
    x = np.eye(n)[groups]
    y = np.random.default_rng(1).standard_normal((n, 4))[groups]
    # One alpha: on one-hot codes every inner-CV prediction is an unseen image's, so the CV error
    # of different alphas ties up to rounding and which one wins would depend on the BLAS build.
    ridge = CrossFitRidge(folds=5, inner_folds=3, alphas=[1e-6], seed=0).fit(x, y, groups)
    crossfit = ridge.transform(x, np.arange(len(x)))
    for row in range(len(x)):
        fold = ridge.fold_of_row[row]
        train = ridge.fold_of_row != fold
        assert groups[row] not in groups[train]  # no caption of this image was fitted on
        np.testing.assert_allclose(crossfit[row], y[train].mean(0), atol=1e-4)
    # The all-rows map (used for free-text queries) did see them and memorises.
    in_sample = ridge.transform(x)
    assert np.abs(in_sample - y).mean() < np.abs(crossfit - y).mean() / 5


def test_alpha_selection_prefers_shrinkage_on_noise_and_not_on_signal():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((120, 20))
    groups = np.arange(120)
    noise = rng.standard_normal((120, 3))
    assert select_alpha(x, noise, groups, [1e-3, 1.0, 1e3], 3, 0) == 1e3
    signal = x @ rng.standard_normal((20, 3))
    assert select_alpha(x, signal, groups, [1e-3, 1.0, 1e3], 3, 0) == 1e-3


def test_describe_reports_choices():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 2))
    info = (
        CrossFitRidge(folds=4, inner_folds=3, alphas=[0.1, 1.0], seed=0)
        .fit(x, y, np.arange(40))
        .describe()
    )
    assert info["folds"] == 4 and len(info["chosen_alpha_per_fold"]) == 4
