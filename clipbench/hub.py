"""Files from the Hugging Face hub: retried and resumed when a transfer breaks, and verified
against their content hash before anything reads them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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


def is_final(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: a wrong name or revision, no access, offline."""
    from huggingface_hub import constants, errors

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
    whole. huggingface_hub keeps a broken transfer's bytes (``.incomplete``) and resumes them
    with an HTTP Range request on the next call; a corrupt blob is deleted and fetched again.
    Waits ``retry.wait_seconds``, doubling, between attempts."""
    attempts = retry.attempts
    for attempt in range(1, attempts + 1):
        try:
            paths = download()
            for path in paths:
                verify_cached(path)
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
            pause = retry.wait_seconds * 2 ** (attempt - 1)
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
