"""Embedding matrices as Arrow tables, and their normalisation (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clipbench.arrow_io import embedding_array


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def embedding_table(ids: Sequence[int], matrix: np.ndarray, **columns: Any) -> pa.Table:
    return pa.table(
        {"id": pa.array(ids, pa.int64()), **columns, "embedding": embedding_array(matrix)}
    )
