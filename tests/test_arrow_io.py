import numpy as np
import pyarrow as pa
import pytest

from clipbench import arrow_io
from clipbench.arrow_io import (
    embedding_array,
    embedding_matrix,
    read_metadata,
    read_table,
    write_table,
)


def test_round_trip_keeps_schema_and_typed_metadata(tmp_path):
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "text": ["a", "b"]})
    meta = {"source": "hf://x", "rows": 2, "spec": {"arch": "RN50", "k": [1, 5]}, "rev": None}
    write_table(table, tmp_path / "t.arrow", meta)
    back = read_table(tmp_path / "t.arrow")
    assert back.schema.remove_metadata() == table.schema
    assert back.equals(table)
    assert read_metadata(tmp_path / "t.arrow") == meta


def test_embedding_column_round_trip():
    m = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    arr = embedding_array(m)
    assert arr.type == pa.list_(pa.float32(), 3)
    np.testing.assert_array_equal(embedding_matrix(arr), m)
    np.testing.assert_array_equal(
        embedding_matrix(pa.chunked_array([arr.slice(0, 2), arr.slice(2)])), m
    )


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    table = pa.table({"x": [1]})

    class Boom(RuntimeError):
        pass

    def broken_writer(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(arrow_io.pa.ipc, "new_file", broken_writer)
    with pytest.raises(Boom):
        write_table(table, tmp_path / "t.arrow")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path):
    write_table(pa.table({"x": [1]}), tmp_path / "t.arrow")
    write_table(pa.table({"x": [2, 3]}), tmp_path / "t.arrow")
    assert read_table(tmp_path / "t.arrow")["x"].to_pylist() == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.arrow"]


def test_rerun_clears_what_a_killed_write_left(tmp_path):
    # SIGKILL runs no cleanup: the temporary file of the killed job stays until its rerun.
    (tmp_path / ".t.arrow.k1ll3d.tmp").write_bytes(b"half an artifact")
    (tmp_path / ".other.arrow.x.tmp").write_bytes(b"another job's")
    write_table(pa.table({"x": [1]}), tmp_path / "t.arrow")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.arrow.x.tmp", "t.arrow"]


def test_atomic_path_serves_any_file_format(tmp_path):
    out = tmp_path / "sub" / "page.html"
    with pytest.raises(KeyError), arrow_io.atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise KeyError
    assert list(out.parent.iterdir()) == []
    with arrow_io.atomic_path(out) as tmp:
        tmp.write_text("whole")
    assert out.read_text() == "whole" and list(out.parent.iterdir()) == [out]
