"""Which float32 matmul mode ``precision: fp32`` runs on a device, measured there.

torch's float32 matmul precision picks kernels, not only accuracy: on CPU "highest" and "high"
run MKL's GEMMs, "medium" oneDNN's, with bf16 inside on AMX CPUs (2e-3 relative error: not
float32) and float32 elsewhere, where it is faster on AMD EPYC (Zen 4 GEMMs: 220 GFLOP/s against
MKL's 195) and slower on an Intel Xeon without AMX (ViT-B-32 at float32: 15.6 img/s against
21.7, its attention's small GEMMs 5x slower); CUDA's "high" is TF32 (1e-3: not float32). So a
mode other than "highest" runs only where its probe stays at float32-level error, computes
differently from "highest", and times faster on a transformer block: timed once per machine
and kept, so that every job and rerun computes the same bits.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from clipbench.arrow_io import atomic_path
from clipbench.cache import cache_dir
from clipbench.cpus import cpu_compute_slot, cpu_identity

log = logging.getLogger("clipbench")
# Relative GEMM error (max |error| / max |exact|) a float32 mode may reach and still count as
# float32: strict float32 measures 3e-7–6e-7 at K = 768, bf16 inside a matmul 2e-3.
FP32_LEVEL_ERROR = 1e-5
# Another mode must beat "highest" by this much to be taken: below it, noise decides.
FASTER_BY = 1.05
# (images, tokens) of the ViT-B blocks a mode is timed on: ViT-B-32's and ViT-B-16's.
BLOCKS = ((8, 50), (2, 197))
WIDTH, HEADS = 768, 12


@contextlib.contextmanager
def matmul_precision(level: str) -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of (batch, tokens, WIDTH) queries, keys and values."""
    b, t, _ = q.shape
    q, k, v = (y.reshape(b, t, HEADS, -1).transpose(1, 2) for y in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)


@functools.cache
def _probe(device: torch.device, level: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 result, float64 reference) of the kernels a tower uses (linear, batched
    matmul, attention, convolution) under the float32 matmul precision ``level``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, WIDTH, dtype=torch.float64, generator=generator)
    w = torch.randn(WIDTH, WIDTH, dtype=torch.float64, generator=generator) / WIDTH**0.5
    x = torch.randn(2, 64, 16, 16, dtype=torch.float64, generator=generator)
    k = torch.randn(64, 64, 3, 3, dtype=torch.float64, generator=generator)
    ops = [
        lambda a, w, x, k: F.linear(a, w),
        lambda a, w, x, k: torch.bmm(a[None], w[None])[0],
        lambda a, w, x, k: _attention(*[F.linear(a, w).view(4, 64, WIDTH)] * 3),
        lambda a, w, x, k: F.conv2d(x, k, padding=1),
    ]
    results = []
    with matmul_precision(level), torch.inference_mode():
        for op in ops:
            args = (t.to(device, torch.float32) for t in (a, w, x, k))
            results.append((op(*args).cpu(), op(a, w, x, k)))
    return results


def fp32_error(device: torch.device, level: str) -> float:
    """Largest relative error against float64 of the probe's kernels under ``level``."""
    return max(
        float((approx.double() - exact).abs().max() / exact.abs().max())
        for approx, exact in _probe(device, level)
    )


def same_kernels(device: torch.device, level: str) -> bool:
    """Whether ``level`` computes the probe's bits exactly as "highest" does (CPU: "high" runs
    MKL as "highest" does): nothing to choose between."""
    mine, strict = _probe(device, level), _probe(device, "highest")
    return all(torch.equal(m, s) for (m, _), (s, _) in zip(mine, strict, strict=True))


def block_rates(device: torch.device, levels: list[str], rounds: int = 6) -> dict[str, float]:
    """GFLOP/s of ViT-B transformer blocks (qkv, attention, output projection, MLP; BLOCKS)
    per level: the levels interleaved round by round, so that a noisy neighbour disturbs all
    alike, and each level's best round kept."""
    generator = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(n, k, generator=generator).to(device) / k**0.5
        for n, k in ((3 * WIDTH, WIDTH), (WIDTH, WIDTH), (4 * WIDTH, WIDTH), (WIDTH, 4 * WIDTH))
    ]
    inputs = [torch.randn(b, t, WIDTH, generator=generator).to(device) for b, t in BLOCKS]

    def block(x: torch.Tensor) -> torch.Tensor:
        qkv, out, fc, proj = weights
        x = x + F.linear(_attention(*F.linear(x, qkv).chunk(3, dim=-1)), out)
        return x + F.linear(F.linear(x, fc), proj)

    best = dict.fromkeys(levels, math.inf)
    with torch.inference_mode():
        for round_ in range(rounds + 1):  # round 0 warms every path up
            for level in levels:
                with matmul_precision(level):
                    start = time.perf_counter()
                    for x in inputs:
                        block(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = time.perf_counter() - start
                if round_:
                    best[level] = min(best[level], seconds)
    # 12 WIDTH² multiply-adds per token in the projections and MLP, 2 t WIDTH in attention.
    flops = sum(2 * b * t * WIDTH * (12 * WIDTH + 2 * t) for b, t in BLOCKS)
    return {level: flops / seconds / 1e9 for level, seconds in best.items()}


def fastest_level(rates: dict[str, float]) -> str:
    """The fastest level, where it beats "highest" by FASTER_BY; else "highest"."""
    level = max(rates, key=rates.__getitem__)
    return level if rates[level] >= FASTER_BY * rates["highest"] else "highest"


def _kept_choice(device: torch.device, levels: list[str]) -> str:
    """:func:`fastest_level` of ``levels`` here, timed once and kept in the cache folder, keyed
    by the device, torch, the thread count and the levels to choose from."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_identity()
    key = "\0".join([name, torch.__version__, str(torch.get_num_threads()), *levels])
    path = cache_dir() / "fp32-matmul" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        kept = json.loads(path.read_text())
        if kept["level"] in levels:
            return kept["level"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with cpu_compute_slot(device.type):  # timed alone, not beside another job's model
        rates = block_rates(device, levels)
    level = fastest_level(rates)
    log.info("float32 matmul modes at float32 error, block GFLOP/s %s: %s kept", rates, level)
    try:
        with atomic_path(path) as tmp:  # concurrent jobs never read half a file
            tmp.write_text(json.dumps({"level": level, "gflops": rates}))
    except OSError as exc:  # e.g. a read-only cache folder: timed again next time
        log.debug("float32 matmul mode not kept (%s)", exc)
    return level


@functools.cache
def fp32_matmul_level(device: torch.device) -> str:
    """The float32 matmul precision ``fp32`` runs on ``device`` (see the module docstring)."""
    candidates = [
        level
        for level in ("medium", "high")
        if fp32_error(device, level) <= FP32_LEVEL_ERROR and not same_kernels(device, level)
    ]
    if not candidates:
        return "highest"
    return _kept_choice(device, ["highest", *candidates])
