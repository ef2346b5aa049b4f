"""Embedding matrices as Arrow tables, and their normalisation (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clipbench.arrow_io import embedding_array, embedding_matrix, read_metadata, read_table


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def embedding_table(ids: Sequence[int], matrix: np.ndarray, **columns: Any) -> pa.Table:
    return pa.table(
        {"id": pa.array(ids, pa.int64()), **columns, "embedding": embedding_array(matrix)}
    )


class Embeddings:
    """One model's image and caption embeddings; image ids are row indices (0…n−1)."""

    def __init__(self, images_path: str, texts_path: str):
        self.images, self.texts = read_table(images_path), read_table(texts_path)
        self.image_emb = embedding_matrix(self.images["embedding"])
        self.text_emb = embedding_matrix(self.texts["embedding"])
        self.caption_image = self.texts["image_id"].to_numpy()
        self.meta = read_metadata(texts_path)

    @property
    def provenance(self) -> dict[str, Any]:
        return {"model": self.meta["model"], "dataset": self.meta["dataset"]}

    def retrieve(self, k: int, tile_scores: int):
        """(text→image, image→text) from one pass over the score matrix."""
        from clipbench.retrieval import retrieve_both

        return retrieve_both(self.text_emb, self.image_emb, self.caption_image, k, tile_scores)
