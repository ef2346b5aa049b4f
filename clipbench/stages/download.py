"""The `download` stage: a dataset source to the canonical image and caption tables."""

from __future__ import annotations

import logging
from typing import Any

from clipbench.arrow_io import spilled_writer
from clipbench.dataset import CAPTIONS_SCHEMA, IMAGES_SCHEMA, DatasetReader
from clipbench.settings import ONE_ATTEMPT, RetrySettings

log = logging.getLogger("clipbench")


def download(
    dataset_cfg: dict[str, Any],
    name: str,
    out_images: str,
    out_captions: str,
    retry: RetrySettings = ONE_ATTEMPT,
) -> None:
    """Streamed: each batch of source rows is made canonical and written before the next is
    read; the metadata (counts, skipped rows) joins the files once the last batch is in."""
    reader = DatasetReader(dataset_cfg, retry)
    with (
        spilled_writer(out_images, IMAGES_SCHEMA) as images,
        spilled_writer(out_captions, CAPTIONS_SCHEMA) as captions,
    ):
        for image_batch, caption_batch in reader.batches():
            images.write(image_batch)
            captions.write(caption_batch)
        metadata = reader.metadata
        log.info(
            "dataset %s: %d images, %d captions from %s (sha256 %s)",
            name,
            metadata["num_rows"],
            metadata["num_captions"],
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
        images.finish({"dataset": name, **metadata})
        captions.finish({"dataset": name, **metadata})
