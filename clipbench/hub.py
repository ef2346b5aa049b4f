"""Files from the Hugging Face hub: retried when a transfer breaks, verified against their
content hash before anything reads them, served from the local cache alone when the hub's host
name does not resolve (no network: no attempt could reach it), and the partial files of killed
transfers cleared.

What huggingface_hub 2.4 does itself: a transfer that breaks is resumed with an HTTP Range
request *within one call* (its own retries, up to 5); it downloads into a temporary file unique
to the process (``blobs/<etag>.<random>.incomplete``) and deletes it when the call fails, so
each of our attempts starts the file anew. Only a killed process leaves that file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from clipbench.errors import InputError

if TYPE_CHECKING:
    from clipbench.settings import RetrySettings

log = logging.getLogger(__name__)

HUB_ADVICE = (
    "Offline? Set HF_HUB_OFFLINE=1 with a populated HF cache, or point the dataset's source "
    "to a local parquet file"
)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def snapshot_commit(path: str | os.PathLike) -> str | None:
    # The HF cache stores files under snapshots/<commit>/: the commit a branch resolved to.
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def git_blob_sha1(path: str | os.PathLike) -> str:
    """Git's object id of a file: what the hub reports as the ETag of a non-LFS file."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class CorruptDownload(OSError):
    """A cached file whose bytes do not hash to the ETag the hub gave for it."""


def verify_cached(path: Path) -> str | None:
    """Check a file of the HF cache against its hub ETag, which names its blob: the sha256 of an
    LFS file (parquet, weights), the git blob id otherwise. A blob that fails is deleted (with
    its snapshot link) so the next attempt downloads it anew. Returns the verified hash, or None
    where the blob name is no known hash."""
    blob = path.resolve()
    expected = blob.name
    if re.fullmatch(r"[0-9a-f]{64}", expected):
        actual = file_sha256(blob)
    elif re.fullmatch(r"[0-9a-f]{40}", expected):
        actual = git_blob_sha1(blob)
    else:
        return None
    if actual != expected:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise CorruptDownload(
            f"{path.name}: the downloaded bytes hash to {actual}, the hub's ETag is {expected} "
            "(a truncated or corrupted transfer)"
        )
    return actual


# A partial file nobody has written to for this long is a killed transfer's: a live one
# writes every few milliseconds, a stalled one times out (HF_HUB_DOWNLOAD_TIMEOUT, 10 s).
STALE_PARTIAL_SECONDS = 60
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def clear_stale_partials(blob: Path, now: float | None = None) -> list[Path]:
    """Remove the partial downloads of ``blob`` (a file of the cache's ``blobs/``) that killed
    transfers left; returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for partial in blob.parent.glob(f"{blob.name}.*.incomplete"):
        with contextlib.suppress(FileNotFoundError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
                removed.append(partial)
    return removed


def unresolvable_hub() -> str | None:
    """The hub's host name when it does not resolve (no network or no DNS), else None; a proxy
    resolves names for us, so with one set this never says no."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    host = urlsplit(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return host
    return None


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub in offline mode for the block: the cache answers, or it fails at once."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_final(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: a wrong name or revision, no access, offline
    (a host name that does not resolve included)."""
    from huggingface_hub import constants, errors

    if any(isinstance(cause, socket.gaierror) for cause in _causes(exc)):
        return True
    if isinstance(exc, errors.LocalEntryNotFoundError):
        # Not cached, and either offline (final) or the hub did not answer (worth another try).
        return constants.HF_HUB_OFFLINE
    final = (
        errors.RepositoryNotFoundError,  # includes gated repos
        errors.RevisionNotFoundError,
        errors.EntryNotFoundError,
        errors.DisabledRepoError,
        errors.OfflineModeIsEnabled,
        errors.HFValidationError,
    )
    if isinstance(exc, final):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def fetch(
    download: Callable[[], list[Path]],
    what: str,
    retry: RetrySettings,
    sleep: Callable[[float], None] = time.sleep,
    advice: str = HUB_ADVICE,
) -> list[Path]:
    """Run ``download`` (hub calls that return paths in the HF cache) until its files arrive
    whole, up to ``retry.attempts`` times, waiting ``retry.wait_seconds``, doubling, between
    attempts; a failure no attempt can fix fails at once. When the hub's host name does not
    resolve, one attempt reads the cache only."""
    host = unresolvable_hub()
    if host is not None:
        log.warning("%s does not resolve (no network?): %s from the local cache only", host, what)
        with cache_only():
            why = f"{host} does not resolve (no network, or no DNS) and the cache lacks it"
            return _attempts(download, what, 1, 0, sleep, f"{why}. {advice}")
    return _attempts(download, what, retry.attempts, retry.wait_seconds, sleep, advice)


def _attempts(
    download: Callable[[], list[Path]],
    what: str,
    attempts: int,
    wait_seconds: float,
    sleep: Callable[[float], None],
    advice: str,
) -> list[Path]:
    for attempt in range(1, attempts + 1):
        try:
            paths = download()
            for path in paths:
                verify_cached(path)
                clear_stale_partials(path.resolve())
            return paths
        except InputError:  # the user's to fix (e.g. no such split), not the transfer's
            raise
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if is_final(exc) or attempt == attempts:
                tried = "" if is_final(exc) else f" after {attempt} attempt(s)"
                advice = (
                    "the hub or the network corrupts it; try again later, or download the file "
                    "yourself and configure the local copy instead (a dataset's `parquet` "
                    "source, a model's `checkpoint`)"
                    if isinstance(exc, CorruptDownload)
                    else advice
                )
                raise InputError(f"cannot fetch {what}{tried} ({failure}). {advice}") from exc
            pause = wait_seconds * 2 ** (attempt - 1)
            log.warning(
                "fetching %s failed (attempt %d of %d: %s); retrying in %.0f s",
                what,
                attempt,
                attempts,
                failure,
                pause,
            )
            sleep(pause)
    raise ValueError(f"attempts must be at least 1, not {attempts}")
