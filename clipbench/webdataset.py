"""WebDataset shards as image–caption rows, read one shard at a time with the standard library.

A shard is a tar file whose members form samples by key: a member's path up to the first dot
of its file name (``s0000001.jpg`` and ``s0000001.txt`` are sample ``s0000001``), members of
one sample stored next to each other, as webdataset writes and reads them. CLIP_benchmark's
retrieval shards (``clip-benchmark/wds_flickr30k``, ``wds_mscoco_captions``: ``<split>/0.tar``…
and ``<split>/nshards.txt``) hold an image member (webp, png, jpg or jpeg) and a ``txt`` member
with one caption per line; its reader splits that text with ``str.splitlines`` and so does this
one, so both see the same captions.

Read with ``tarfile`` rather than the webdataset package: each sample needs only the raw bytes
of two members, no decoding pipeline; hub shards are fetched through clipbench.hub (retried,
hash-checked) before they are opened, which webdataset's URL streams would bypass;
and it is one dependency less.
"""

from __future__ import annotations

import itertools
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from clipbench.errors import InputError

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order: the first present
TEXT_EXTENSIONS = ("txt",)
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Every name of a brace pattern as webdataset writes them: ``{0..4}`` (zero-padded when
    the first bound is, ``{000..009}``) and ``{a,b}``; several braces expand as a product."""
    parts, choices = [], []
    last = 0
    for match in _BRACE.finditer(pattern):
        parts.append(pattern[last : match.start()])
        body = match[1]
        ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if ranged:
            lo, hi = ranged[1], ranged[2]
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
            if int(hi) < int(lo):
                raise InputError(f"shard pattern {pattern!r}: range {{{body}}} runs backwards")
            choices.append([str(i).zfill(width) for i in range(int(lo), int(hi) + 1)])
        else:
            choices.append(body.split(","))
        last = match.end()
    parts.append(pattern[last:])
    names = []
    for picked in itertools.product(*choices):
        names.append("".join(p + c for p, c in zip(parts, [*picked, ""], strict=True)))
    return names


def sample_key(member: str) -> tuple[str, str] | None:
    """(key, extension) of a member name; None for names without an extension."""
    folder, _, name = member.rpartition("/")
    stem, dot, extension = name.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, streamed: one member in memory at a time."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            key, members = None, {}
            for info in tar:
                found = sample_key(info.name) if info.isfile() else None
                if found is None:
                    continue
                if found[0] != key and key is not None:
                    yield key, members
                    members = {}
                key = found[0]
                members[found[1]] = tar.extractfile(info).read()
            if key is not None:
                yield key, members
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(
            f"{path} is not a readable tar shard ({exc}); it may be truncated: fetch it again"
        ) from exc


RAW_SCHEMA = pa.schema(
    [("key", pa.string()), ("image", pa.binary()), ("text", pa.list_(pa.string()))]
)


def shard_table(
    path: Path,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    text_extensions: Sequence[str] = TEXT_EXTENSIONS,
) -> pa.Table:
    """One shard's samples as rows: key, the first image member present (null if none), and
    the lines of every text member present, in the order the extensions are given."""
    keys, images, texts = [], [], []
    for key, members in samples(path):
        keys.append(key)
        images.append(next((members[e] for e in image_extensions if e in members), None))
        lines = []
        for extension in text_extensions:
            if extension in members:
                try:
                    lines += members[extension].decode("utf-8").splitlines()
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{path}: sample {key}'s .{extension} is not UTF-8 text ({exc})"
                    ) from exc
        texts.append(lines)
    return pa.table([keys, images, texts], schema=RAW_SCHEMA)
