"""Batches, their size, and the bounded read-ahead that prepares the next ones in threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# batch_size "auto", measured with `python -m clipbench.bench --batch N` (2-core AVX-512/AMX
# CPUs, 224² images, fused fast paths): CNN towers peak at batch 8 in float32 (RN50 27.7 img/s
# vs 24.4 at 32) and 16 in bf16 (RN50 130 vs 103 at 32); transformer image towers at a number
# of tokens per batch, since a larger GEMM falls off a cliff (bf16 6304 × 768 × 3072: 1.6
# TFLOP/s, at 3152 rows 2.9; its 38.7 MB output is past glibc's 32 MB mmap threshold, so every
# call faults in fresh zeroed pages): ViT-B-16 (197 tokens) at 16 in bf16 (49 img/s vs 34 at
# 64) and 8–16 in float32, ViT-B-32 (50 tokens) at 64 in bf16 and 16–32 in float32. With the
# thresholds raised (clipbench/allocator.py) the cliff is gone, but larger batches still gain
# nothing (AMX Xeon, bf16, img/s at these batches / twice them: ViT-B-16 58–61 / 58–60,
# ViT-B-32 241–260 / 234–236, resnet50 186–193 / 186–190, RN50 157–161 / 163–166). GPUs want
# large batches. Text towers: captions are sorted by length and cut to each batch's longest,
# so large batches cost little padding (CLIP text, 833 captions, bf16: 0.75–0.86 s at 256,
# 1.24 at 32; float32: 2.55–2.70 at 128, 2.81–2.85 at 32).
CPU_CONV_BATCH = {"bf16": 16, "fp32": 8}
CPU_TOKENS_PER_BATCH = {"bf16": 3200, "fp32": 1600}
CUDA_BATCH = 128
CPU_TEXT_BATCH = {"bf16": 256, "fp32": 128}
OTHER_IMAGE_BATCH = 32  # an image tower neither convolutional nor of patch tokens


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def batch_sizes(
    setting: int | str,
    device_type: str,
    convolutional: bool,
    tokens: int | None = None,
    reduced: bool = False,
) -> tuple[int, int]:
    """(image, text) batch sizes: the configured one for both, or for ``auto`` the best
    measured for this tower on this device; ``tokens``: per image, for transformer towers;
    ``reduced``: the towers run in bf16/fp16."""
    if setting != "auto":
        return int(setting), int(setting)
    if device_type == "cuda":
        return CUDA_BATCH, CUDA_BATCH
    precision = "bf16" if reduced else "fp32"
    text = CPU_TEXT_BATCH[precision]
    if convolutional:
        image = CPU_CONV_BATCH[precision]
    elif not tokens:
        image = OTHER_IMAGE_BATCH
    else:
        image = min(64, max(8, _pow2_floor(CPU_TOKENS_PER_BATCH[precision] // tokens)))
    return image, text


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
