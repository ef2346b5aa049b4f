"""The `histogram` stage: matched vs non-matched similarity distributions and rank CDFs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipbench.arrow_io import read_table, write_table
from clipbench.embeddings import Embeddings
from clipbench.histogram import histogram_table, kde_table, rank_cdf_table
from clipbench.metrics import rank_distribution
from clipbench.retrieval import TILE_SCORES
from clipbench.stages.scores import DIRECTIONS, placement_of

PAIR_CHUNK = 8192


def non_matched_scores(emb: Embeddings, max_pairs: int, seed: int) -> np.ndarray:
    """Cosine of (caption, image) pairs where the image is not the caption's own: all of them
    while there are at most ``max_pairs``, else a seeded uniform sample of that many."""
    n_texts, n_images = emb.text_emb.shape[0], emb.image_emb.shape[0]
    if n_texts * (n_images - 1) <= max_pairs:
        other = np.ones((n_texts, n_images), bool)
        other[np.arange(n_texts), emb.caption_image] = False
        return (emb.text_emb @ emb.image_emb.T)[other]
    rng = np.random.default_rng(seed)
    text = rng.integers(0, n_texts, max_pairs)
    # Uniform over the n−1 other images: draw from n−1 slots, skip over the own image.
    image = rng.integers(0, n_images - 1, max_pairs)
    image += image >= emb.caption_image[text]
    if n_texts * n_images <= TILE_SCORES:  # the whole matrix is cheaper than gathering rows
        return (emb.text_emb @ emb.image_emb.T)[text, image]
    out = np.empty(max_pairs, np.float32)
    for start in range(0, max_pairs, PAIR_CHUNK):  # bounded temporaries at any N
        part = slice(start, start + PAIR_CHUNK)
        out[part] = np.einsum("ij,ij->i", emb.text_emb[text[part]], emb.image_emb[image[part]])
    return out


def histogram(
    images_path: str,
    texts_path: str,
    t2i_path: str,
    i2t_path: str,
    bins: int,
    lo: float,
    hi: float,
    max_pairs: int,
    seed: int,
    out_hist: str,
    out_kde: str,
    out_ranks: str,
    ties: str = "expected",
) -> None:
    """Similarity distributions (matched vs non-matched pairs) and rank CDFs for one model."""
    emb = Embeddings(images_path, texts_path)
    matched = read_table(t2i_path)["score"].to_numpy()
    other = non_matched_scores(emb, max_pairs, seed)
    provenance = {
        **emb.provenance,
        "n_matched": int(matched.size),
        "n_non_matched": int(other.size),
        "seed": seed,
    }
    groups = (("matched", matched), ("non-matched", other))
    write_table(
        pa.concat_tables(
            [labelled(histogram_table(v, bins, lo, hi), "pairs", name) for name, v in groups]
        ),
        out_hist,
        provenance,
    )
    write_table(
        pa.concat_tables([labelled(kde_table(v), "pairs", name) for name, v in groups]),
        out_kde,
        provenance,
    )
    ranks = zip(DIRECTIONS, (t2i_path, i2t_path), strict=True)
    write_table(
        pa.concat_tables(
            [
                labelled(rank_cdf_table(*rank_distribution(placement_of(p), ties)), "direction", d)
                for d, p in ranks
            ]
        ),
        out_ranks,
        {**emb.provenance, "ties": ties},
    )


def labelled(table: pa.Table, column: str, value: str) -> pa.Table:
    return table.append_column(column, pa.array([value] * table.num_rows, pa.string()))
