"""Distribution of matched-pair similarities: fixed-edge histogram and a Gaussian KDE curve."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def histogram_table(values: np.ndarray, bins: int, lo: float, hi: float) -> pa.Table:
    """Counts and density on fixed edges shared by every model, so histograms overlay."""
    values = np.clip(np.asarray(values, dtype=np.float64), lo, hi)  # cosine can exceed 1 by 1 ulp
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    width = (hi - lo) / bins
    return pa.table(
        {
            "bin_start": edges[:-1],
            "bin_end": edges[1:],
            "bin_center": (edges[:-1] + edges[1:]) / 2,
            "count": counts.astype(np.int64),
            "density": counts / (values.size * width),
        }
    )


def kde_table(values: np.ndarray, points: int = 256) -> pa.Table:
    """Gaussian kernel density with Scott's bandwidth (what seaborn's kde=True draws)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    std = values.std(ddof=1) if n > 1 else 0.0
    bandwidth = max(std * n ** (-1 / 5), 1e-3)
    grid = np.linspace(values.min() - 3 * bandwidth, values.max() + 3 * bandwidth, points)
    density = np.zeros(points)
    # The kernel in float32 (half the time of float64; ~1e-7 relative on a plotted curve),
    # each chunk's sum accumulated in float64.
    grid32, values32 = (
        (grid / bandwidth).astype(np.float32),
        (values / bandwidth).astype(np.float32),
    )
    for start in range(0, n, 65536):  # bounded temporaries at any n
        z = grid32[:, None] - values32[None, start : start + 65536]
        np.multiply(z, z, out=z)
        z *= np.float32(-0.5)
        density += np.exp(z, out=z).sum(axis=1, dtype=np.float64)
    density /= n * bandwidth * np.sqrt(2 * np.pi)
    return pa.table({"similarity": grid, "density": density})


def rank_cdf_table(values: np.ndarray, counts: np.ndarray | None = None) -> pa.Table:
    """Share of queries whose best positive ranks at or above each rank: ``values`` are the
    ranks (one per query), or with ``counts`` the distinct ranks and how many queries sit
    there (fractional where tied queries spread over their tied places)."""
    if counts is None:
        values, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    counts = np.asarray(counts, dtype=np.float64)
    cumulative = np.cumsum(counts)
    # Over the running sum's own last value, not counts.sum(): with fractional counts the two
    # may differ in the last bit, and the curve must end at exactly 1.
    return pa.table(
        {
            "rank": np.asarray(values, np.int64),
            "count": counts,
            "cdf": cumulative / cumulative[-1],
        }
    )
