"""The `references` stage: each model's metrics beside the published figures it should
reproduce (clipbench.references)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from clipbench.arrow_io import read_table, write_table
from clipbench.hub import file_sha256
from clipbench.references import check_references, read_references

log = logging.getLogger("clipbench")


def references(
    metrics_paths: Sequence[str],
    tables: Sequence[str],
    dataset_key: str | None,
    model_keys: Mapping[str, str | None],
    k: int,
    tolerance: float,
    out_path: str,
) -> None:
    """``model_keys``: each model's reference key (None: it names none)."""
    metrics = pa.concat_tables([read_table(p) for p in metrics_paths])
    named = {m: key for m, key in model_keys.items() if key}
    table = check_references(metrics, read_references(tables), dataset_key, named, k, tolerance)
    for row in table.to_pylist():
        log.log(
            logging.INFO if row["reproduced"] else logging.WARNING,
            "%s %s %s: ours %.4f, published %.4f (%s, %+.4f; tolerance %.4f)",
            row["model"],
            row["direction"],
            row["metric"],
            row["ours"],
            row["published"],
            "reproduced" if row["reproduced"] else "NOT reproduced",
            row["difference"],
            row["tolerance"],
        )
    # Tables by name and content hash: the artifact does not depend on where the workflow is.
    read = [{"file": Path(p).name, "sha256": file_sha256(p)} for p in tables]
    write_table(
        table, out_path, {"dataset_reference": dataset_key, "tolerance": tolerance, "tables": read}
    )
