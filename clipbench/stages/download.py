"""The `download` stage: a dataset source to the canonical image and caption tables."""

from __future__ import annotations

import logging
from typing import Any

from clipbench.arrow_io import write_table
from clipbench.dataset import load_dataset

log = logging.getLogger("clipbench")


def download(
    dataset_cfg: dict[str, Any],
    name: str,
    out_images: str,
    out_captions: str,
    retry: dict | None = None,
) -> None:
    images, captions, metadata = load_dataset(dataset_cfg, retry)
    log.info(
        "dataset %s: %d images, %d captions from %s (sha256 %s)",
        name,
        images.num_rows,
        captions.num_rows,
        metadata["source"],
        metadata["sha256"],
    )
    if skipped := metadata["skipped_rows"]:
        log.warning(
            "dataset %s: skipped %d source row(s) whose image cannot be decoded "
            "(on_bad_image: skip):\n%s",
            name,
            len(skipped),
            "\n".join(f"  row {r['row']}: {r['reason']}" for r in skipped),
        )
    write_table(images, out_images, {"dataset": name, **metadata})
    write_table(captions, out_captions, {"dataset": name, **metadata})
