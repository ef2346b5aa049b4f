"""Loading an image–caption dataset from the hub, a local parquet or a local HF dataset folder
into the workflow's canonical table: ``id`` (int64), ``image`` (original encoded bytes), ``text``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipbench.errors import InputError
from clipbench.images import check_image_header

CANONICAL_SCHEMA = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("text", pa.string())])


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str | None) -> str:
    """Return the file's sha256; raise if ``expected`` is given and differs."""
    actual = file_sha256(path)
    if expected and actual.lower() != expected.lower():
        raise InputError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The file is corrupt or not the configured revision; delete it (or the hub cache "
            "entry) and download again, or update `sha256` in the config"
        )
    return actual


def download_hub_file(repo_id: str, filename: str, revision: str) -> Path:
    """Fetch one file of a hub dataset repo, pinned to ``revision``, through the HF cache."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo_id=repo_id, filename=filename, revision=revision, repo_type="dataset"
            )
        )
    except Exception as exc:  # network, auth, offline mode: all need the same advice
        raise InputError(
            f"cannot fetch {filename} of dataset {repo_id}@{revision} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Offline? Set HF_HUB_OFFLINE=1 with a populated "
            "HF cache, or point the dataset's source to a local parquet file"
        ) from exc


def read_hf_folder(path: str | os.PathLike, split: str | None) -> pa.Table:
    """Rows of a ``datasets.save_to_disk`` folder, as Arrow, without decoding images."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(
                f"{path}: split {split!r} not found; available splits: {sorted(loaded)}"
            )
        loaded = loaded[split]
    # The arrow format applies any indices mapping and leaves Image structs undecoded.
    return loaded.with_format("arrow")[:]


def read_source(source: dict[str, Any], split: str | None) -> tuple[pa.Table, dict[str, Any]]:
    """Read the configured source; return the raw table and provenance for the metadata."""
    if "hub" in source:
        hub = source["hub"]
        path = download_hub_file(hub["repo_id"], hub["file"], hub["revision"])
        info = {
            "source": f"hf://datasets/{hub['repo_id']}/{hub['file']}",
            "revision": hub["revision"],
            "path": str(path),
        }
    elif "parquet" in source:
        path = Path(source["parquet"])
        info = {"source": str(path), "revision": None, "path": str(path)}
    elif "hf_folder" in source:
        folder = Path(source["hf_folder"])
        if not folder.is_dir():
            raise InputError(f"dataset folder {folder} does not exist")
        return read_hf_folder(folder, split), {
            "source": str(folder),
            "revision": None,
            "path": str(folder),
            "sha256": None,
        }
    else:
        raise InputError(f"unknown dataset source {sorted(source)}; use hub, parquet or hf_folder")
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist")
    info["sha256"] = verify_sha256(path, source.get("sha256"))
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{path} is not a readable parquet file ({exc}); it may be truncated: download it again"
        ) from exc
    return table, info


def image_bytes(column: pa.ChunkedArray | pa.Array, base_dir: Path | None) -> list[bytes | None]:
    """Encoded bytes from an HF Image column (struct{bytes, path}) or a plain binary column.

    An HF Image row may hold only a ``path``; it is read relative to ``base_dir``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        data = column.field("bytes").to_pylist() if "bytes" in names else [None] * len(column)
        paths = column.field("path").to_pylist() if "path" in names else [None] * len(column)
        out = []
        for blob, rel in zip(data, paths, strict=True):
            if blob is None and rel:
                candidate = Path(rel) if base_dir is None else base_dir / rel
                blob = candidate.read_bytes() if candidate.is_file() else None
            out.append(blob)
        return out
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist()
    raise InputError(
        f"image column has type {column.type}; expected an HF Image struct or binary bytes"
    )


def _check_column(table: pa.Table, name: str, role: str) -> None:
    if name not in table.column_names:
        raise InputError(
            f"{role} column {name!r} not found; the source has columns {table.column_names}. "
            f"Set `{role}_column` in the dataset's config"
        )


def canonical_table(
    raw: pa.Table,
    image_column: str,
    text_column: str,
    limit: int | None = None,
    base_dir: Path | None = None,
) -> pa.Table:
    """Validate and reshape a raw source table into ``id``, ``image``, ``text``."""
    _check_column(raw, image_column, "image")
    _check_column(raw, text_column, "text")
    if limit is not None:
        raw = raw.slice(0, limit)
    if raw.num_rows == 0:
        raise InputError("the dataset has zero rows; check the source file and `limit`")
    texts = raw[text_column]
    if not pa.types.is_string(texts.type) and not pa.types.is_large_string(texts.type):
        raise InputError(f"text column {text_column!r} has type {texts.type}; expected strings")
    blank = pc.or_kleene(pc.is_null(texts), pc.equal(pc.utf8_trim_whitespace(texts), ""))
    bad = pc.indices_nonzero(pc.fill_null(blank, True)).to_pylist()
    if bad:
        raise InputError(
            f"{len(bad)} caption(s) are null or empty (row ids {bad[:20]}); "
            "fill or remove those rows"
        )
    blobs = image_bytes(raw[image_column], base_dir)
    for row_id, blob in enumerate(blobs):
        check_image_header(blob, row_id)
    return pa.table(
        {
            "id": pa.array(range(raw.num_rows), pa.int64()),
            "image": pa.array(blobs, pa.binary()),
            "text": texts.cast(pa.string()),
        },
        schema=CANONICAL_SCHEMA,
    )


def load_dataset(cfg: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    """Load one configured dataset; return the canonical table and its provenance metadata."""
    raw, info = read_source(cfg["source"], cfg.get("split"))
    base_dir = Path(info["path"]).parent if "hf_folder" not in cfg["source"] else None
    table = canonical_table(
        raw, cfg["image_column"], cfg["text_column"], cfg.get("limit"), base_dir
    )
    metadata = {
        "source": info["source"],
        "revision": info["revision"],
        "sha256": info["sha256"],
        "split": cfg.get("split"),
        "image_column": cfg["image_column"],
        "text_column": cfg["text_column"],
        "source_rows": raw.num_rows,
        "num_rows": table.num_rows,
    }
    return table, metadata
