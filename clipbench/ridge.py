"""A fitted text→image projection for the baseline: closed-form ridge regression with k-fold
cross-fitting, so that no caption is scored by a map fitted on its own image.

Folds are drawn over *images* (groups): all captions of an image fall in the same fold, and a
caption is projected by the map fitted on the other folds. The regularisation is chosen per
fold by an inner group k-fold on that fold's training rows (lowest mean squared error).
Alphas are multiples of the mean squared singular value of the centred training features, so
one grid serves features of any scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clipbench.errors import InputError


@dataclass(frozen=True)
class RidgeMap:
    weight: np.ndarray  # (d_in, d_out)
    x_mean: np.ndarray
    y_mean: np.ndarray
    alpha: float  # the relative alpha chosen

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.x_mean) @ self.weight + self.y_mean


def _svd(x: np.ndarray):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u, s, vt, float(np.mean(s**2)) or 1.0


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeMap:
    """Ridge with intercept: W = argmin |Xc W − Yc|² + α·scale·|W|², closed form via SVD."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    u, s, vt, scale = _svd(x - x_mean)
    weight = vt.T @ ((s / (s**2 + alpha * scale))[:, None] * (u.T @ (y - y_mean)))
    return RidgeMap(weight, x_mean, y_mean, alpha)


def group_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per row; rows of one group share a fold; fold sizes differ by ≤ 1 group."""
    unique = np.unique(groups)
    if unique.size < folds:
        raise InputError(f"cross-fitting needs at least {folds} images, got {unique.size}")
    order = np.random.default_rng(seed).permutation(unique.size)
    fold_of_group = np.empty(unique.size, np.int64)
    fold_of_group[order] = np.arange(unique.size) % folds
    return fold_of_group[np.searchsorted(unique, groups)]


def select_alpha(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alphas: Sequence[float],
    folds: int,
    seed: int,
) -> float:
    """The alpha with the lowest inner cross-validated mean squared error."""
    fold = group_folds(groups, folds, seed)
    errors = np.zeros(len(alphas))
    for f in range(folds):
        train, valid = fold != f, fold == f
        x_mean, y_mean = x[train].mean(0), y[train].mean(0)
        u, s, vt, scale = _svd(x[train] - x_mean)
        uy = u.T @ (y[train] - y_mean)
        xv = (x[valid] - x_mean) @ vt.T
        for i, alpha in enumerate(alphas):
            pred = xv @ ((s / (s**2 + alpha * scale))[:, None] * uy) + y_mean
            errors[i] += ((pred - y[valid]) ** 2).sum()
    return float(alphas[int(np.argmin(errors))])


@dataclass
class CrossFitRidge:
    # A model's `ridge` settings (clipbench.kinds.bert_resnet.RidgeSpec; defaults in the schema).
    folds: int
    inner_folds: int
    alphas: Sequence[float]
    seed: int
    fold_of_row: np.ndarray = field(init=False, repr=False)
    maps: list[RidgeMap] = field(init=False, repr=False)
    full: RidgeMap = field(init=False, repr=False)

    def _fit_one(self, x, y, groups) -> RidgeMap:
        alpha = select_alpha(x, y, groups, self.alphas, self.inner_folds, self.seed + 1)
        return fit_ridge(x, y, alpha)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> CrossFitRidge:
        """Fit one map per fold on the other folds' rows, and one on all rows (for queries)."""
        x, y, groups = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(groups)
        self.fold_of_row = group_folds(groups, self.folds, self.seed)
        self.maps = [
            self._fit_one(
                x[self.fold_of_row != f], y[self.fold_of_row != f], groups[self.fold_of_row != f]
            )
            for f in range(self.folds)
        ]
        self.full = self._fit_one(x, y, groups)
        return self

    def transform(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Project ``x``. With ``rows`` (the fitted rows' indices), each row goes through the
        map of its own fold, fitted without it; without, through the all-rows map."""
        x = np.asarray(x, np.float64)
        if rows is None:
            return self.full(x).astype(np.float32)
        fold = self.fold_of_row[np.asarray(rows)]
        out = np.empty((x.shape[0], self.full.weight.shape[1]), np.float64)
        for f, ridge_map in enumerate(self.maps):
            out[fold == f] = ridge_map(x[fold == f])
        return out.astype(np.float32)

    def describe(self) -> dict:
        return {
            "folds": self.folds,
            "inner_folds": self.inner_folds,
            "alphas": list(self.alphas),
            "chosen_alpha_per_fold": [m.alpha for m in self.maps],
            "chosen_alpha_all_rows": self.full.alpha,
            "seed": self.seed,
        }
