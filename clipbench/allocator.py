"""Keep the memory a tower frees for its next batch, instead of giving it back to the kernel.

glibc maps every allocation above its mmap threshold (dynamic, at most 32 MB) fresh from the
kernel, and trims the heap's top once more than twice that lies free; either way the next
batch's tensors fault in new zeroed pages. A CNN's activations at batch 16 in bf16 are 25.7 MB
each (torchvision resnet50, 56² × 256), so they come and go every layer: 2-vCPU AMX Xeon,
alternated, resnet50 bf16 batch 16 165–169 img/s with ~16,000 page faults a forward, 188–189
with none once these thresholds are raised; batch 32 126–130 → 186–190. The cost: freed
memory stays with the process until it exits, and the heap needs a few batches to settle
(a freed block can be a few bytes short of the next aligned request): the towers' peak RSS
+64–132 MB (1.48–1.50 GB → 1.54–1.63 GB, one tower per process).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger("clipbench")

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # above any one activation of our towers at their batch sizes
TRIM_THRESHOLD = 1 << 30
SWITCH = "CLIPBENCH_KEEP_FREED_MEMORY"  # "0": glibc's own thresholds


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether it applied.
    Both at once: setting either freezes the other, and a frozen 128 KB mmap threshold (the
    start value) would map every tensor afresh (resnet50 bf16: 90 img/s)."""
    if os.environ.get(SWITCH) == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        log.info("glibc refused the malloc thresholds: freed memory goes back to the kernel")
    return applied
