"""The explorer page of one dataset: every caption's and every image's top-K under each model,
with the true match and its rank, the hardest queries per model and the queries the models
disagree on most. Self-contained like the report (data inline, thumbnails as data URIs, plain
JavaScript, no network), built from the hits artifacts alone, so what it shows is exactly what
they hold."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import jinja2

from clipbench.arrow_io import atomic_path, read_metadata, read_table
from clipbench.pages import TEMPLATES, script_json, thumbnail_uri


@dataclass(frozen=True)
class ModelHits:
    """One model's hits artifacts on the dataset."""

    t2i: str  # results/<dataset>/hits/<model>.arrow: a row per caption
    i2t: str  # results/<dataset>/hits/<model>.i2t.arrow: a row per image


def _direction(path: str, candidates: str, query_ids: str, expected: list[int]) -> dict[str, Any]:
    """One direction's hits as the page indexes them: by query row, in ``expected``'s order
    (the dataset's captions, or its image ids)."""
    table = read_table(path)
    if table[query_ids].to_pylist() != expected:
        raise ValueError(f"{path}: {query_ids} not in the order of the dataset's tables")
    return {
        "rank": table["rank"].to_pylist(),
        "ties": table["ties"].to_pylist(),
        "top": table[f"topk_{candidates}_ids"].to_pylist(),
        # Four decimals are what a reader compares; they keep the page small.
        "scores": [[round(s, 4) for s in row] for row in table["topk_scores"].to_pylist()],
    }


def explorer_data(
    dataset_path: str,
    captions_path: str,
    models: Mapping[str, ModelHits],
    thumbnail_px: int,
    max_thumbnails: int,
    workers: int = 1,
) -> dict[str, Any]:
    """What the page embeds. Image ids are row indices (dataset.canonical_tables), so lists
    are indexed by id; the first ``max_thumbnails`` images get a thumbnail, the rest a tile
    with their id (the page stays one that a browser opens at once for large N)."""
    images, captions = read_table(dataset_path), read_table(captions_path)
    caption_ids, image_ids = captions["id"].to_pylist(), list(range(images.num_rows))
    blobs = images["image"].to_pylist()
    shown = blobs[:max_thumbnails]
    # PIL decodes and resizes without the GIL: threads use every CPU the job may.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        thumbs = list(pool.map(thumbnail_uri, shown, range(len(shown)), repeat(thumbnail_px)))
    thumbs += [None] * (len(blobs) - len(shown))
    first = next(iter(models.values()))
    return {
        "dataset": read_metadata(dataset_path).get("dataset"),
        "k": read_metadata(first.t2i)["k"],
        "models": list(models),
        "captions": {
            "id": caption_ids,
            "image": captions["image_id"].to_pylist(),
            "text": captions["text"].to_pylist(),
        },
        "images": {"thumb": thumbs, "count": len(blobs)},
        "t2i": {m: _direction(h.t2i, "image", "text_id", caption_ids) for m, h in models.items()},
        "i2t": {m: _direction(h.i2t, "text", "image_id", image_ids) for m, h in models.items()},
    }


def write_explorer(
    dataset_path: str,
    captions_path: str,
    models: Mapping[str, ModelHits],
    out_html: str,
    thumbnail_px: int,
    max_thumbnails: int,
    workers: int = 1,
) -> None:
    data = explorer_data(dataset_path, captions_path, models, thumbnail_px, max_thumbnails, workers)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("explorer.html.j2").render(
        data=script_json(data), dataset=data["dataset"], thumb_px=thumbnail_px
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
