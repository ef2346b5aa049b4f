"""Batches, their size, and the bounded read-ahead that prepares the next ones in threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# batch_size "auto", measured per device type and tower (2-core AVX-512 CPUs, 224² images):
# CNN towers peak at batch 8 (RN50 fp32 12.8 img/s vs 10.6 at 32; bf16 on AMX 67 vs 51),
# ViTs at 16–32 (ViT-B-16 bf16 31 img/s at 32, 24 at 64); GPUs want large batches.
AUTO_BATCH = {
    "cpu": {"convolutional": 8, "other": 32},
    "cuda": {"convolutional": 128, "other": 128},
}


def batch_sizes(setting: int | str, device_type: str, convolutional: bool) -> tuple[int, int]:
    """(image, text) batch sizes: the configured one for both, or for ``auto`` the best
    measured per tower type (text towers count as "other")."""
    if setting != "auto":
        return int(setting), int(setting)
    sizes = AUTO_BATCH["cuda" if device_type == "cuda" else "cpu"]
    return sizes["convolutional" if convolutional else "other"], sizes["other"]


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def prepared_batches(
    items: Sequence, batch_size: int, prepare: Callable[[Sequence], Any], workers: int
) -> Iterator[tuple[int, Any]]:
    """(batch length, prepare(batch)) in order. With ``workers`` > 0, that many threads
    prepare the next batches (image decoding releases the GIL) while the caller consumes this
    one; at most ``workers + 1`` batches are in flight, so memory stays bounded."""
    chunks = list(batches(items, batch_size))
    if workers == 0:
        for chunk in chunks:
            yield len(chunk), prepare(chunk)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(prepare, c) for c in chunks[: workers + 1])
        for i, chunk in enumerate(chunks):
            result = pending.popleft().result()
            if i + workers + 1 < len(chunks):
                pending.append(pool.submit(prepare, chunks[i + workers + 1]))
            yield len(chunk), result
