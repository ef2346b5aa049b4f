"""The optional, GPU-tagged `robustness` stage: retrieval as seeded Gaussian pixel noise is
added to the images, and as seeded character-level typos are added to the captions."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from clipbench.arrow_io import embedding_matrix, read_metadata, read_table, write_table
from clipbench.cpus import cpu_compute_slot
from clipbench.embeddings import l2_normalize
from clipbench.encode import caption_embeddings, fit_text_head
from clipbench.kinds.base import ModelSpec
from clipbench.logs import Progress
from clipbench.metrics import summarize
from clipbench.retrieval import retrieve_both
from clipbench.robustness import add_pixel_noise, add_typos
from clipbench.settings import ONE_ATTEMPT, EncodeSettings, RetrySettings, RobustnessSettings
from clipbench.stages.encode import Session


def recall_rows(
    text_emb, image_emb, caption_image, k, recall_at, ties="expected"
) -> list[tuple[str, str, float]]:
    """(direction, metric, value) for hits@K and R@k in both directions."""
    t2i, i2t = retrieve_both(text_emb, image_emb, caption_image, k)
    rows = []
    for direction, result in (("text_to_image", t2i), ("image_to_text", i2t)):
        summary = summarize(result.placement, k, recall_at, ties)
        for name in ("hits_at_k", *(f"recall_at_{r}" for r in recall_at)):
            rows.append((direction, name, float(summary[name])))
    return rows


def perturbed_rows(
    session: Session,
    spec: ModelSpec,
    robustness: RobustnessSettings,
    images_path: str,
    texts_path: str,
    k: int,
    recall_at: Sequence[int],
    ties: str,
) -> list[tuple]:
    """(perturbation, level, direction, metric, value) at every level of both perturbations."""
    clean_images = embedding_matrix(read_table(images_path)["embedding"])
    clean_texts = embedding_matrix(read_table(texts_path)["embedding"])
    caption_image, seed = session.caption_image, robustness.seed
    rows: list[tuple] = []
    for sigma in robustness.noise_sigmas:
        images = (
            clean_images
            if sigma == 0
            else l2_normalize(
                session.image_features(
                    lambda image, row_id, s=sigma: add_pixel_noise(image, s, seed, row_id)
                )
            )
        )
        rows += [
            ("image_noise", float(sigma), *r)
            for r in recall_rows(clean_texts, images, caption_image, k, recall_at, ties)
        ]
    head = None
    if spec.fitted_head is not None:  # refit exactly as encode did, on clean captions
        clean_raw = session.text_features(session.captions["text"].to_pylist())
        head = fit_text_head(spec, clean_raw, clean_images, caption_image)
    for rate in robustness.typo_rates:
        if rate == 0:
            texts = clean_texts
        else:
            noisy = [
                add_typos(t, rate, seed, int(i))
                for t, i in zip(
                    session.captions["text"].to_pylist(),
                    session.captions["id"].to_numpy(),
                    strict=True,
                )
            ]
            texts = caption_embeddings(head, session.text_features(noisy))
        rows += [
            ("caption_typos", float(rate), *r)
            for r in recall_rows(texts, clean_images, caption_image, k, recall_at, ties)
        ]
    return rows


def run_robustness(
    dataset_path: str,
    captions_path: str,
    images_path: str,
    texts_path: str,
    model_name: str,
    spec: ModelSpec,
    settings: EncodeSettings,
    robustness: RobustnessSettings,
    k: int,
    recall_at: Sequence[int],
    out_path: str,
    threads: int,
    progress: Progress | None = None,
    ties: str = "expected",
    retry: RetrySettings = ONE_ATTEMPT,
) -> None:
    """Retrieval as seeded Gaussian pixel noise is added to the images, and as seeded
    character-level typos are added to the captions (the other side stays clean)."""
    session = Session.open(
        spec, settings, dataset_path, captions_path, threads, progress, model_name, retry=retry
    )
    with cpu_compute_slot(session.device.type):
        rows = perturbed_rows(
            session, spec, robustness, images_path, texts_path, k, recall_at, ties
        )
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {
            name: list(col)
            for name, col in zip(
                ("perturbation", "level", "direction", "metric", "value"), columns, strict=True
            )
        }
    )
    write_table(
        table,
        out_path,
        {
            "model": model_name,
            "seed": robustness.seed,
            "k": k,
            "ties": ties,
            "dataset": read_metadata(dataset_path).get("dataset"),
        },
    )
