"""Hub downloads that break, arrive corrupt or cannot be had: huggingface_hub's real download
code against a local stand-in for the hub (HF_ENDPOINT on 127.0.0.1; no network)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clipbench import hub
from clipbench.demo import write_demo_parquet
from clipbench.errors import InputError
from clipbench.settings import RetrySettings

REPO, COMMIT, FILE = "org/pokemon", "0123456789abcdef0123456789abcdef01234567", "data/train.parquet"


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves one dataset file the way the hub's resolve endpoint does (ETag = its sha256,
    X-Repo-Commit, byte ranges), misbehaving on purpose: ``break_first`` GETs close the
    connection halfway through the body, ``corrupt_first`` GETs send flipped bytes."""

    def __init__(self, data: bytes, break_first=0, corrupt_first=0, drop_first=0, port=0):
        super().__init__(("127.0.0.1", port), FakeHubHandler)
        self.data, self.break_first, self.corrupt_first = data, break_first, corrupt_first
        self.drop_first = drop_first  # HEADs answered by closing the connection
        self.gets: list[str | None] = []  # the Range header of every GET
        self.heads = 0


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _headers(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("ETag", f'"{hashlib.sha256(self.server.data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _known(self) -> bool:
        if self.path.split("?")[0] == f"/datasets/{REPO}/resolve/{COMMIT}/{FILE}":
            return True
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_HEAD(self):
        self.server.heads += 1
        if self.server.heads <= self.server.drop_first:
            self.close_connection = True
            self.connection.shutdown(2)
        elif self._known():
            self._headers(200, len(self.server.data))

    def do_GET(self):
        if not self._known():
            return
        hub_ = self.server
        ranged = self.headers.get("Range")
        hub_.gets.append(ranged)
        start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1]) if ranged else 0
        body = hub_.data[start:]
        if ranged:
            extra = {"Content-Range": f"bytes {start}-{len(hub_.data) - 1}/{len(hub_.data)}"}
            self._headers(206, len(body), extra)
        else:
            self._headers(200, len(body))
        if len(hub_.gets) <= hub_.corrupt_first:
            body = bytes(b ^ 0xFF for b in body)
        if len(hub_.gets) <= hub_.break_first:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the transfer breaks: the client sees a short body
            return
        self.wfile.write(body)


@pytest.fixture
def parquet_bytes(tmp_path) -> bytes:
    path = tmp_path / "train.parquet"
    write_demo_parquet(str(path), rows=12, seed=3)
    return path.read_bytes()


SCRIPT = """
import json, sys
from clipbench.dataset import read_source
from clipbench.errors import InputError
from clipbench.settings import RetrySettings
source, retry = json.loads(sys.argv[1]), RetrySettings.parse(json.loads(sys.argv[2]))
try:
    batches, info = read_source(source, "train", retry)
    print(json.dumps({"rows": sum(b.num_rows for b in batches), "info": info}))
except InputError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def run_read_source(
    cache: Path,
    endpoint: str | None,
    attempts: int = 4,
    wait: float = 5,
    file: str = FILE,
    source: dict | None = None,
) -> dict:
    """read_source on a hub source (default: ``file`` of the test repo), in a fresh process
    pointed at ``endpoint`` (no proxy; None: offline, the cache alone): its result or error,
    and its stderr."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint or "http://offline.invalid",
        "HF_HUB_OFFLINE": "0" if endpoint else "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    for proxy in hub.PROXY_VARIABLES:
        env.pop(proxy, None)
    source = source or {"hub": {"repo_id": REPO, "revision": COMMIT, "file": file}}
    retry = {"attempts": attempts, "wait_seconds": wait}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(source), json.dumps(retry)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


def fetch_from(server: FakeHub, cache: Path, attempts: int = 3, file: str = FILE) -> dict:
    """read_source against the fake hub, served for the duration of the call."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        return run_read_source(cache, endpoint, attempts, wait=0, file=file)
    finally:
        server.shutdown()
        server.server_close()


def test_clean_download_is_verified_against_the_hub_etag(tmp_path, parquet_bytes):
    server = FakeHub(parquet_bytes)
    out = fetch_from(server, tmp_path / "cache")
    assert out["rows"] == 12
    assert out["info"]["sha256"] == hashlib.sha256(parquet_bytes).hexdigest()
    assert out["info"]["resolved_revision"] == COMMIT
    assert server.gets == [None]


def test_a_transfer_that_breaks_midway_is_resumed(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    # Big enough that whole download chunks reach the disk before the break (~2.5 chunks).
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(DOWNLOAD_CHUNK_SIZE // 4) for _ in range(10)]
    pq.write_table(pa.table({"image": blobs, "text": ["x"] * 10}), tmp_path / "big.parquet")
    data = (tmp_path / "big.parquet").read_bytes()
    server = FakeHub(data, break_first=1)
    out = fetch_from(server, tmp_path / "cache")
    assert out["rows"] == 10
    assert out["info"]["sha256"] == hashlib.sha256(data).hexdigest()
    # The second request asked only for what the first one had not written to disk.
    resumed_at = (len(data) // 2) // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE
    assert resumed_at > 0 and server.gets == [None, f"bytes={resumed_at}-"]


def test_a_corrupt_transfer_is_caught_before_reading_and_fetched_again(tmp_path, parquet_bytes):
    server = FakeHub(parquet_bytes, corrupt_first=1)
    out = fetch_from(server, tmp_path / "cache")
    assert out["rows"] == 12
    assert out["info"]["sha256"] == hashlib.sha256(parquet_bytes).hexdigest()
    assert server.gets == [None, None]  # the corrupt blob was deleted, then fetched whole


def test_a_download_that_keeps_failing_gives_up_naming_the_file(tmp_path, parquet_bytes):
    server = FakeHub(parquet_bytes, corrupt_first=99)
    out = fetch_from(server, tmp_path / "cache", attempts=2)
    assert "cannot fetch data/train.parquet of dataset org/pokemon" in out["error"]
    assert "after 2 attempt(s)" in out["error"] and "hub's ETag" in out["error"]
    assert len(server.gets) == 2
    # Nothing corrupt stays in the cache for a later run to trust.
    repo = tmp_path / "cache" / "datasets--org--pokemon"
    assert not [p for p in repo.rglob("*") if p.is_file() or p.is_symlink()]


def test_a_hub_that_does_not_answer_is_asked_again(tmp_path, parquet_bytes):
    server = FakeHub(parquet_bytes, drop_first=2)
    out = fetch_from(server, tmp_path / "cache", attempts=3)
    assert out["rows"] == 12 and server.heads == 3 and server.gets == [None]


def test_a_hub_that_cannot_be_reached_is_tried_again(tmp_path, parquet_bytes):
    """Connection refused: huggingface_hub reports "not in the local cache", which is final
    only offline. The fake hub starts listening once the first attempt has failed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    source = {"hub": {"repo_id": REPO, "revision": COMMIT, "file": FILE}}
    retry = {"attempts": 2, "wait_seconds": 1}
    run = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(source), json.dumps(retry)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    warning = run.stderr.readline()
    while warning and "retrying in" not in warning:
        warning = run.stderr.readline()
    assert "attempt 1 of 2" in warning, warning
    server = FakeHub(parquet_bytes, port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out, _ = run.communicate(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(out.strip().splitlines()[-1])["rows"] == 12


def test_a_missing_file_is_not_retried(tmp_path, parquet_bytes):
    server = FakeHub(parquet_bytes)
    out = fetch_from(server, tmp_path / "cache", attempts=4, file="data/absent.parquet")
    assert "cannot fetch data/absent.parquet" in out["error"] and "attempt" not in out["error"]
    assert server.gets == []


def test_fetch_retries_with_growing_waits_then_succeeds(tmp_path):
    calls, waits = [], []
    good = tmp_path / "f.txt"
    good.write_text("x")

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return [good]

    assert hub.fetch(flaky, "f.txt", RetrySettings(3, 1.5), sleep=waits.append) == [good]
    assert waits == [1.5, 3.0]


def test_fetch_passes_user_errors_through_at_once(tmp_path):
    def wrong_split():
        raise InputError("no parquet files for split 'test'")

    with pytest.raises(InputError, match="^no parquet files"):
        hub.fetch(wrong_split, "x", RetrySettings(5, 0), sleep=pytest.fail)


def test_cached_blobs_are_checked_against_their_etag_name(tmp_path):
    data = b"parquet bytes"
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / COMMIT
    blobs.mkdir()
    snap.mkdir(parents=True)
    for name, digest in (("lfs.bin", hashlib.sha256(data)), ("git.txt", None)):
        etag = digest.hexdigest() if digest else hashlib.sha1(b"blob 13\0" + data).hexdigest()
        (blobs / etag).write_bytes(data)
        (snap / name).symlink_to(blobs / etag)
        assert hub.verify_cached(snap / name) == etag
    (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data[:-1])  # truncated
    with pytest.raises(hub.CorruptDownload, match="lfs.bin"):
        hub.verify_cached(snap / "lfs.bin")
    assert not (snap / "lfs.bin").exists() and len(list(blobs.iterdir())) == 1


def test_a_corrupt_shard_that_cannot_be_refetched_fails_instead_of_dropping_rows(tmp_path):
    """Offline, a split's snapshot comes back without the shard found corrupt and deleted: the
    download must fail, not read the remaining shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "cache" / "datasets--org--multi"
    snapshot, blobs = repo / "snapshots" / COMMIT / "data", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for shard, bad in (("train-00000-of-00002", False), ("train-00001-of-00002", True)):
        pq.write_table(pa.table({"image": [b"x"], "text": [shard]}), tmp_path / "shard")
        data = (tmp_path / "shard").read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data[:-10] if bad else data)
        (snapshot / f"{shard}.parquet").symlink_to(blob)
    source = {"hub": {"repo_id": "org/multi", "revision": COMMIT}}
    error = run_read_source(tmp_path / "cache", None, 3, 0, source=source)["error"]
    assert "['data/train-00001-of-00002.parquet'] arrived corrupt" in error
    assert "HF_HUB_OFFLINE" in error


NOWHERE = "http://no-such-host.invalid"  # .invalid never resolves (RFC 6761)


def test_a_hub_name_that_does_not_resolve_fails_at_once_with_the_offline_advice(tmp_path):
    # Before: 4 attempts × huggingface_hub's own 5 retries, plus 5 + 10 + 20 s of waits.
    start = time.monotonic()
    out = run_read_source(tmp_path / "cache", NOWHERE)
    assert time.monotonic() - start < 20
    assert "no-such-host.invalid does not resolve" in out["error"]
    assert "Offline? Set HF_HUB_OFFLINE=1" in out["error"] and "attempt(s)" not in out["error"]
    assert "Retrying in" not in out["stderr"]  # huggingface_hub's retries were not run either


def test_a_hub_name_that_does_not_resolve_still_serves_the_cache(tmp_path, parquet_bytes):
    online = fetch_from(FakeHub(parquet_bytes), tmp_path / "cache")
    offline = run_read_source(tmp_path / "cache", NOWHERE)
    assert offline["rows"] == online["rows"] == 12
    assert "from the local cache only" in offline["stderr"]


def test_partial_files_of_killed_transfers_are_cleared(tmp_path, parquet_bytes):
    blobs = tmp_path / "cache" / f"datasets--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    etag = hashlib.sha256(parquet_bytes).hexdigest()
    killed, live = blobs / f"{etag}.0badf00d.incomplete", blobs / f"{etag}.5ca1ab1e.incomplete"
    killed.write_bytes(parquet_bytes[:100])
    live.write_bytes(parquet_bytes[:50])
    old = time.time() - 2 * hub.STALE_PARTIAL_SECONDS
    os.utime(killed, (old, old))
    assert fetch_from(FakeHub(parquet_bytes), tmp_path / "cache")["rows"] == 12
    # The killed one is gone; one still being written (another process) is left alone.
    assert not killed.exists() and live.exists()
    assert (blobs / etag).read_bytes() == parquet_bytes


def test_name_resolution_failures_are_final_and_timeouts_are_not():
    def chained(cause: BaseException) -> Exception:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise OSError("cannot reach the hub") from inner
        except OSError as outer:
            return outer

    assert hub.is_final(chained(socket.gaierror(-2, "Name or service not known")))
    assert not hub.is_final(chained(TimeoutError("timed out")))
    assert not hub.is_final(chained(ConnectionResetError("reset by peer")))
