"""Arrow IPC artifacts: atomic writes, JSON metadata that round-trips, embedding columns."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa


def encode_metadata(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    # Every value is JSON so that numbers, lists and nested specs come back as they went in.
    return {
        str(k).encode(): json.dumps(v, sort_keys=True, ensure_ascii=False).encode()
        for k, v in metadata.items()
    }


def decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        try:
            out[k.decode()] = json.loads(v)
        except (json.JSONDecodeError, UnicodeDecodeError):
            out[k.decode()] = v.decode(errors="replace")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Fault injection for the crash tests: a job about to rename a finished artifact whose path
# matches this glob touches the file named by HOLD_NOTICE and waits there to be killed, so a
# test can SIGKILL a run at exactly that point (some outputs in place, one still temporary).
HOLD_BEFORE_RENAME = "CLIPBENCH_HOLD_BEFORE_RENAME"
HOLD_NOTICE = "CLIPBENCH_HOLD_NOTICE"


def _hold_if_asked(path: Path) -> None:
    pattern = os.environ.get(HOLD_BEFORE_RENAME)
    if pattern and fnmatch.fnmatch(path.as_posix(), pattern):
        Path(os.environ[HOLD_NOTICE]).write_text(str(path))
        time.sleep(3600)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable where the platform can; some filesystems (FUSE, CIFS)
    and Windows cannot sync a folder, and a finished artifact must not fail for that."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _clear_stale(path: Path) -> None:
    # A job killed mid-write (SIGKILL, a lost node) leaves its temporary file behind; only the
    # job that owns ``path`` writes these, so the rerun of that job clears them.
    name = glob.escape(path.name)
    stale_files = [*path.parent.glob(f".{name}.*.tmp"), *path.parent.glob(f".{name}.*.spill")]
    for stale in stale_files:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, clear_stale: bool = True) -> Iterator[Path]:
    """A temporary file beside ``path`` that becomes ``path`` only once the block completes:
    readers, and Snakemake, never see a half-written artifact. The data reaches the disk before
    the rename and the rename before the block returns, so a power cut leaves the old state or
    the whole new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clear_stale:
        _clear_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are ordinary files
        _fsync(tmp)
        _hold_if_asked(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_path`` for an artifact that is a folder of files (a saved model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
            elif f.is_dir():
                _fsync_dir(f)
        _fsync_dir(tmp)
        _hold_if_asked(path)
        if path.is_dir():  # a rename cannot replace a non-empty folder
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike,
    schema: pa.Schema,
    metadata: Mapping | None = None,
    compression: str | None = None,
    clear_stale: bool = True,
) -> Iterator[pa.ipc.RecordBatchFileWriter]:
    """An Arrow IPC file writer whose file appears at ``path`` only once it is complete.
    ``compression`` (lz4/zstd buffers) is for bulky intermediates read batch by batch."""
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **encode_metadata(metadata)})
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with (
        atomic_path(path, clear_stale) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, schema, options=options) as writer,
    ):
        yield writer


class SpilledWriter:
    """Batches whose file metadata is known only after the last of them (a source read in one
    streaming pass): they go to a hidden spill file beside ``path``; :meth:`finish` streams
    them into the atomic final file with the metadata, a batch at a time."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path, self.schema = Path(path), schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(self.path)  # a killed run's spill and temporary files
        fd, spill = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".spill"
        )
        os.close(fd)
        self.spill = Path(spill)
        self._sink = pa.OSFile(spill, "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def finish(self, metadata: Mapping) -> None:
        self._close()
        with (
            pa.memory_map(str(self.spill), "r") as source,
            atomic_writer(self.path, self.schema, metadata, clear_stale=False) as writer,
        ):
            spilled = pa.ipc.open_file(source)
            for i in range(spilled.num_record_batches):
                writer.write_batch(spilled.get_batch(i))
        self.spill.unlink()

    def discard(self) -> None:
        self._close()
        self.spill.unlink(missing_ok=True)

    def _close(self) -> None:
        if not self._sink.closed:
            self._writer.close()
            self._sink.close()


@contextlib.contextmanager
def spilled_writer(path: str | os.PathLike, schema: pa.Schema) -> Iterator[SpilledWriter]:
    """A :class:`SpilledWriter` that leaves nothing behind if the block fails or never calls
    ``finish``."""
    writer = SpilledWriter(path, schema)
    try:
        yield writer
    finally:
        writer.discard()


def write_table(table: pa.Table, path: str | os.PathLike, metadata: Mapping | None = None) -> None:
    """Write ``table`` as an Arrow IPC file, atomically: readers never see a half-written file."""
    with atomic_writer(path, table.schema, metadata) as writer:
        writer.write_table(table)


def read_table(path: str | os.PathLike) -> pa.Table:
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    with pa.memory_map(str(path), "r") as source:
        return decode_metadata(pa.ipc.open_file(source).schema.metadata)


def table_metadata(table: pa.Table) -> dict[str, Any]:
    return decode_metadata(table.schema.metadata)


def embedding_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a 2-D float matrix as ``fixed_size_list<float32, d>``."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), m.shape[1])


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Inverse of :func:`embedding_array`: an (n, d) float32 matrix.

    Zero-copy (a read-only view of the memory-mapped file) where the column allows it, so a
    100k × 512 matrix costs no extra resident memory beyond the file's pages.
    """
    if isinstance(column, pa.ChunkedArray):
        # combine_chunks copies even a single chunk
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    d = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, d).astype(np.float32, copy=False)
