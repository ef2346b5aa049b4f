"""Loading an image–caption dataset from the hub, a local parquet, a local HF dataset folder or
WebDataset shards into the workflow's two canonical tables: images (``id``, ``image`` as the
original encoded bytes, ``text``) and captions (``id``, ``image_id``, ``text``).

Sources are read a batch at a time (a parquet row group, a shard) and every batch is made
canonical as it arrives (:class:`Canonicalizer`), so memory holds one batch, not the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clipbench.errors import InputError
from clipbench.hub import HUB_ADVICE, fetch, file_sha256, snapshot_commit
from clipbench.images import check_image_header, image_problem
from clipbench.settings import ONE_ATTEMPT, RetrySettings
from clipbench.webdataset import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, expand_braces, shard_table

IMAGES_SCHEMA = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("text", pa.string())])
CAPTIONS_SCHEMA = pa.schema([("id", pa.int64()), ("image_id", pa.int64()), ("text", pa.string())])
ON_BAD_IMAGE = ("error", "skip")
PARQUET_BATCH_ROWS = 256  # rows per batch read from a parquet file (≈ 30–300 MB of images)
FOLDER_BATCH_ROWS = 256


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


def download_hub_file(repo_id: str, filename: str, revision: str, retry: RetrySettings) -> Path:
    """Fetch one file of a hub dataset repo, pinned to ``revision``, through the HF cache."""
    from huggingface_hub import hf_hub_download

    def download() -> list[Path]:
        path = hf_hub_download(
            repo_id=repo_id, filename=filename, revision=revision, repo_type="dataset"
        )
        return [Path(path)]

    what = f"{filename} of dataset {repo_id}@{revision} from the Hugging Face hub"
    return fetch(download, what, retry)[0]


def in_split(relative: Path, split: str) -> bool:
    """Hub layouts name a split's parquet files data/<split>-*.parquet or <split>/*.parquet."""
    return any(
        part == split or part.startswith((f"{split}-", f"{split}.")) for part in relative.parts
    )


def download_hub_split(repo_id: str, revision: str, split: str, retry: RetrySettings) -> list[Path]:
    """Every parquet file of one split of a hub dataset repo, pinned to ``revision``."""
    from huggingface_hub import snapshot_download

    first: list[str] = []  # the split's files as the first attempt found them

    def download() -> list[Path]:
        folder = Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=["*.parquet"],
            )
        )
        everything = sorted(folder.rglob("*.parquet"))
        files = [p for p in everything if in_split(p.relative_to(folder), split)]
        names = [str(p.relative_to(folder)) for p in files]
        # A corrupt file is deleted before the next attempt; where that attempt cannot reach
        # the hub (offline), the snapshot comes back without it: fail, never read fewer rows.
        if first and (missing := sorted(set(first) - set(names))):
            raise InputError(
                f"{repo_id}@{revision}: {missing} arrived corrupt and could not be fetched "
                f"again (offline, or the hub unreachable); retry online. {HUB_ADVICE}"
            )
        first[:] = first or names
        if not files:
            found = [str(p.relative_to(folder)) for p in everything][:20]
            raise InputError(
                f"{repo_id}@{revision} has no parquet files for split {split!r} "
                f"(found {found}); set `split`, or name one `file`"
            )
        return files

    return fetch(download, f"dataset {repo_id}@{revision} from the Hugging Face hub", retry)


@contextlib.contextmanager
def _readable_parquet(path: Path) -> Iterator[None]:
    try:
        yield
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{path} is not a readable parquet file ({exc}); it may be truncated: download it again"
        ) from exc


def parquet_rows(path: Path) -> int:
    with _readable_parquet(path):
        return pq.ParquetFile(path).metadata.num_rows


def parquet_batches(path: Path) -> Iterator[pa.Table]:
    """A parquet file a batch of rows at a time."""
    with _readable_parquet(path):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield pa.Table.from_batches([batch])


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


def table_batches(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, rows):
        yield table.slice(start, rows)


def hub_shard_names(repo_id: str, revision: str, split: str, retry: RetrySettings) -> list[str]:
    """A split's shards as CLIP_benchmark lays them out: ``<split>/nshards.txt`` holds N, the
    shards are ``<split>/0.tar`` … ``<split>/<N−1>.tar``."""
    count_file = download_hub_file(repo_id, f"{split}/nshards.txt", revision, retry)
    try:
        count = int(count_file.read_text().strip())
    except ValueError as exc:
        raise InputError(
            f"{repo_id}@{revision}: {split}/nshards.txt does not hold a number"
        ) from exc
    return [f"{split}/{i}.tar" for i in range(count)]


def webdataset_files(
    source: dict[str, Any], split: str, retry: RetrySettings
) -> tuple[list[Path], dict]:
    """The shards of a `webdataset` source, fetched (hub) or found (local), with provenance."""
    wds = source["webdataset"]
    if "hub" in wds:
        hub = wds["hub"]
        names = (
            expand_braces(wds["shards"])
            if wds.get("shards")
            else hub_shard_names(hub["repo_id"], hub["revision"], split, retry)
        )
        files = [download_hub_file(hub["repo_id"], n, hub["revision"], retry) for n in names]
        return files, {
            "source": f"hf://datasets/{hub['repo_id']} (webdataset, {len(files)} shard(s) of "
            f"{wds.get('shards') or split})",
            "revision": hub["revision"],
            "resolved_revision": snapshot_commit(files[0]),
        }
    files = [Path(p) for p in expand_braces(wds["shards"])]
    return files, {
        "source": f"{wds['shards']} (webdataset, {len(files)} shard(s))",
        "revision": None,
    }


def read_source(
    source: dict[str, Any], split: str, retry: RetrySettings = ONE_ATTEMPT
) -> tuple[Iterator[pa.Table], dict[str, Any]]:
    """The configured source as batches of raw rows, and its provenance for the metadata.
    Every file is found, fetched and hash-checked here, before any batch is read. ``retry``
    (config `download`) governs hub fetches."""
    if "hf_folder" in source:
        folder = Path(source["hf_folder"])
        if not folder.is_dir():
            raise InputError(f"dataset folder {folder} does not exist")
        table = read_hf_folder(folder, split)
        info = {"source": str(folder), "revision": None, "path": str(folder), "sha256": None}
        return table_batches(table, FOLDER_BATCH_ROWS), info | {"rows": table.num_rows}
    if "webdataset" in source:
        files, info = webdataset_files(source, split, retry)
    elif "hub" in source:
        hub = source["hub"]
        if hub.get("file"):
            files = [download_hub_file(hub["repo_id"], hub["file"], hub["revision"], retry)]
            name = f"hf://datasets/{hub['repo_id']}/{hub['file']}"
        else:
            files = download_hub_split(hub["repo_id"], hub["revision"], split, retry)
            name = f"hf://datasets/{hub['repo_id']} (split {split}, {len(files)} file(s))"
        info = {
            "source": name,
            "revision": hub["revision"],
            "resolved_revision": snapshot_commit(files[0]),
        }
    elif "parquet" in source:
        files = [Path(source["parquet"])]
        info = {"source": str(files[0]), "revision": None}
    else:
        raise InputError(
            f"unknown dataset source {sorted(source)}; use hub, parquet, hf_folder or webdataset"
        )
    if source.get("sha256") and len(files) > 1:
        raise InputError(
            "`sha256` checks a single file; this source has several: pin the "
            "revision to a commit instead, or name one `file`"
        )
    for path in files:
        if not path.is_file():
            raise InputError(f"dataset file {path} does not exist")
    digests = [verify_sha256(p, source.get("sha256")) for p in files]
    info.update(path=str(files[0]), sha256=digests[0] if len(files) == 1 else digests)
    if "webdataset" in source:
        wds = source["webdataset"]
        image_ext = wds.get("image_extensions", IMAGE_EXTENSIONS)
        text_ext = wds.get("text_extensions", TEXT_EXTENSIONS)
        return (shard_table(path, image_ext, text_ext) for path in files), info
    info["rows"] = sum(parquet_rows(path) for path in files)
    return (batch for path in files for batch in parquet_batches(path)), info


def image_bytes(
    column: pa.ChunkedArray | pa.Array, base_dir: Path | None, first_row: int = 0
) -> list[bytes | None]:
    """Encoded bytes from an HF Image column (struct{bytes, path}) or a plain binary column;
    ``first_row``: the source row id of its first row, for messages.

    An HF Image row may hold only a ``path``; it is read relative to ``base_dir``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        data = column.field("bytes").to_pylist() if "bytes" in names else [None] * len(column)
        paths = column.field("path").to_pylist() if "path" in names else [None] * len(column)
        root = Path(base_dir or ".").resolve()
        out = []
        for row, (blob, rel) in enumerate(zip(data, paths, strict=True), start=first_row):
            if blob is None and rel:
                # A dataset names images beside itself; it cannot make the workflow read (and
                # put into artifacts and reports) any other file on the machine. The check is on
                # the path as written (`..`, absolute): files in an HF cache snapshot are links
                # into its blobs/ folder, and those stay readable.
                candidate = Path(os.path.normpath(root / rel))
                if not candidate.is_relative_to(root):
                    raise InputError(
                        f"row {row}: image path {rel!r} points outside the dataset's folder "
                        f"{root}; keep the images beside the parquet file (or embed their bytes)"
                    )
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


def caption_lists(texts: pa.ChunkedArray, text_column: str, first_row: int = 0) -> list[list[str]]:
    """Captions per source row: a string column gives one each, a list column several."""
    kind = texts.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        if not (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)):
            raise InputError(f"text column {text_column!r} has type {kind}; expected strings")
        rows = texts.to_pylist()
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        rows = [[t] for t in texts.to_pylist()]
    else:
        raise InputError(f"text column {text_column!r} has type {kind}; expected strings")
    bad = [
        i
        for i, caps in enumerate(rows, start=first_row)
        if not caps or any(c is None or not c.strip() for c in caps)
    ]
    if bad:
        raise InputError(
            f"{len(bad)} row(s) have a null or empty caption (row ids {bad[:20]}); "
            "fill or remove those rows"
        )
    return rows


def bad_image_rows(
    blobs: list[bytes | None], on_bad_image: str = "error", first_row: int = 0
) -> dict[int, str]:
    """Source rows whose image cannot be used, with the reason, by row id.

    ``error``: raise at the first row whose header does not read (cheap; a broken body fails
    later, when the pixels are decoded). ``skip``: decode every image in full now and return
    every failure, so that all models later see the same rows.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise InputError(f"on_bad_image is {on_bad_image!r}; use one of {list(ON_BAD_IMAGE)}")
    if on_bad_image == "error":
        for row_id, blob in enumerate(blobs, start=first_row):
            check_image_header(blob, row_id)
        return {}
    rows = enumerate(blobs, start=first_row)
    problems = {row_id: image_problem(blob, row_id) for row_id, blob in rows}
    return {row_id: reason for row_id, reason in problems.items() if reason is not None}


class Canonicalizer:
    """Raw source rows to canonical images and captions, batch after batch: ids run on across
    batches, ``limit`` counts source rows, and identical images merge across batches
    (``image_grouping="bytes"``). :meth:`finish` says whether anything was left."""

    def __init__(
        self,
        image_column: str,
        text_column: str,
        limit: int | None = None,
        base_dir: Path | None = None,
        image_grouping: str = "row",
        on_bad_image: str = "error",
    ):
        self.image_column, self.text_column, self.limit = image_column, text_column, limit
        self.base_dir, self.image_grouping, self.on_bad_image = (
            base_dir,
            image_grouping,
            on_bad_image,
        )
        self.source_rows = 0  # read so far (after limit)
        self.images = self.captions = 0
        self.skipped: dict[int, str] = {}
        self._image_of_key: dict[Any, int] = {}

    @property
    def full(self) -> bool:
        return self.limit is not None and self.source_rows >= self.limit

    def feed(self, raw: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The images new in these rows and all their captions (either may be empty)."""
        _check_column(raw, self.image_column, "image")
        _check_column(raw, self.text_column, "text")
        if self.limit is not None:
            raw = raw.slice(0, max(0, self.limit - self.source_rows))
        first = self.source_rows
        self.source_rows += raw.num_rows
        captions_per_row = caption_lists(raw[self.text_column], self.text_column, first)
        blobs = image_bytes(raw[self.image_column], self.base_dir, first)
        skipped = bad_image_rows(blobs, self.on_bad_image, first)
        self.skipped |= skipped
        images: list[bytes] = []
        first_caption: list[str] = []
        caption_image: list[int] = []
        caption_text: list[str] = []
        for row, (blob, caps) in enumerate(zip(blobs, captions_per_row, strict=True), first):
            if row in skipped:
                continue
            key = hashlib.sha256(blob).digest() if self.image_grouping == "bytes" else row
            if key not in self._image_of_key:
                self._image_of_key[key] = self.images + len(images)
                images.append(blob)
                first_caption.append(caps[0])
            caption_image += [self._image_of_key[key]] * len(caps)
            caption_text += caps
        image_table = pa.table(
            {
                "id": pa.array(range(self.images, self.images + len(images)), pa.int64()),
                "image": pa.array(images, pa.binary()),
                "text": pa.array(first_caption, pa.string()),
            },
            schema=IMAGES_SCHEMA,
        )
        caption_table = pa.table(
            {
                "id": pa.array(range(self.captions, self.captions + len(caption_text)), pa.int64()),
                "image_id": pa.array(caption_image, pa.int64()),
                "text": pa.array(caption_text, pa.string()),
            },
            schema=CAPTIONS_SCHEMA,
        )
        self.images += len(images)
        self.captions += len(caption_text)
        return image_table, caption_table

    def finish(self) -> None:
        if self.source_rows == 0:
            raise InputError(
                "the dataset has zero rows; check that the source file holds rows (and `limit`, "
                "if set)"
            )
        if self.images == 0:
            first = min(self.skipped)
            raise InputError(
                f"no image of the {self.source_rows} row(s) can be decoded, which leaves zero "
                f"rows (on_bad_image: skip; row {first}: {self.skipped[first]}); check the "
                "image column and the source"
            )


def canonical_tables(
    raw: pa.Table, image_column: str, text_column: str, **options: Any
) -> tuple[pa.Table, pa.Table, dict[int, str]]:
    """Validate a raw source table; return its images, its captions and the skipped rows.

    images: ``id``, ``image`` (original bytes), ``text`` (the image's first caption);
    captions: ``id``, ``image_id``, ``text``. With ``image_grouping="bytes"`` rows holding
    byte-identical images become one image with several captions; with ``"row"`` every source
    row is its own image (the seed study's setup). With ``on_bad_image="skip"`` rows whose image
    cannot be decoded are left out, captions included, before ids are given; the third value maps
    their source row ids (0-based, after ``limit``) to the reason (empty for ``"error"``).
    ``options``: those of :class:`Canonicalizer` (limit, base_dir, image_grouping, on_bad_image).
    """
    canonical = Canonicalizer(image_column, text_column, **options)
    images, captions = canonical.feed(raw)
    canonical.finish()
    return images, captions, canonical.skipped


class DatasetReader:
    """One configured dataset, read a batch at a time: iterate :meth:`batches` for (images,
    captions) tables; :attr:`metadata` is complete once they are exhausted."""

    def __init__(self, cfg: dict[str, Any], retry: RetrySettings = ONE_ATTEMPT):
        self.cfg = cfg
        self._raw, self.info = read_source(cfg["source"], cfg["split"], retry)
        folder = cfg["source"].get("hf_folder")
        self.canonical = Canonicalizer(
            cfg["image_column"],
            cfg["text_column"],
            cfg.get("limit"),
            Path(folder) if folder else Path(self.info["path"]).parent,
            cfg.get("image_grouping", "row"),
            cfg.get("on_bad_image", "error"),
        )
        self.rows_read = 0
        self.stopped_at_limit = False

    def batches(self) -> Iterator[tuple[pa.Table, pa.Table]]:
        for raw in self._raw:
            if self.canonical.full:
                self.stopped_at_limit = True  # the rest is never read
                break
            self.rows_read += raw.num_rows
            yield self.canonical.feed(raw)
        self.canonical.finish()

    @property
    def source_rows(self) -> int | None:
        """Rows in the source: from the files' own counts where they have them (parquet, a
        dataset folder), else those read (None when reading stopped at `limit`)."""
        if self.info.get("rows") is not None:
            return self.info["rows"]
        return None if self.stopped_at_limit else self.rows_read

    @property
    def metadata(self) -> dict[str, Any]:
        cfg, canonical = self.cfg, self.canonical
        return {
            "source": self.info["source"],
            "revision": self.info["revision"],
            "resolved_revision": self.info.get("resolved_revision"),
            "sha256": self.info["sha256"],
            "split": cfg["split"],
            "image_column": cfg["image_column"],
            "text_column": cfg["text_column"],
            "image_grouping": cfg.get("image_grouping", "row"),
            "source_rows": self.source_rows,
            "num_rows": canonical.images,
            "num_captions": canonical.captions,
            "on_bad_image": canonical.on_bad_image,
            # Source row ids (0-based, as in the error messages) left out, and why.
            "skipped_rows": [{"row": r, "reason": why} for r, why in canonical.skipped.items()],
        }


def load_dataset(
    cfg: dict[str, Any], retry: RetrySettings = ONE_ATTEMPT
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """One configured dataset whole: its images, its captions and provenance metadata."""
    reader = DatasetReader(cfg, retry)
    parts = list(reader.batches())
    images = pa.concat_tables([p[0] for p in parts]) if parts else IMAGES_SCHEMA.empty_table()
    captions = pa.concat_tables([p[1] for p in parts]) if parts else CAPTIONS_SCHEMA.empty_table()
    return images, captions, reader.metadata
