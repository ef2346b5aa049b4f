"""Which float32 matmul mode ``precision: fp32`` runs on a device, measured there.

torch's float32 matmul precision picks kernels, not only accuracy: on CPU "highest" and "high"
run MKL's GEMMs, "medium" oneDNN's, with bf16 inside on AMX CPUs (2e-3 relative error: not
float32) and float32 elsewhere, where it is faster on AMD EPYC (Zen 4 GEMMs: 220 GFLOP/s against
MKL's 195) and slower on an Intel Xeon without AMX (ViT-B-32 at float32: 15.6 img/s against
21.7, its attention's small GEMMs 5x slower); CUDA's "high" is TF32 (1e-3: not float32). So a
mode other than "highest" runs only where its probe stays at float32-level error, computes
differently from "highest", and times faster on a transformer block: timed once per machine
and kept, so that every job and rerun computes the same bits.

The fused float32 linears with an epilogue (an activation, a residual add) are chosen the same
way: oneDNN's post-ops, or torch's matmul under that mode with the epilogue after it, where
that times faster (2-core Zen 3, AVX2, where MKL's GEMMs beat oneDNN's: ViT-B-32 at batch 32
14.5 img/s through the post-ops, 18.7 after torch's matmul).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator

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
    """torch's float32 matmul precision ``level``, and cuDNN's float32 convolutions to match:
    "highest" alone leaves them in TF32 (1e-3), torch's default for convolutions."""
    conv = torch.backends.cudnn.conv
    before = torch.get_float32_matmul_precision(), conv.fp32_precision
    torch.set_float32_matmul_precision(level)
    # The new API only: a mix with the legacy `allow_tf32` flags makes torch raise on reading them.
    conv.fp32_precision = "ieee" if level == "highest" else "tf32"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        conv.fp32_precision = before[1]


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


def _interleaved(
    device: torch.device, candidates: dict[str, Callable[[], object]], rounds: int
) -> dict[str, float]:
    """Best seconds of each candidate's call, the candidates interleaved round by round so
    that a noisy neighbour disturbs all alike; round 0 warms every path up."""
    best = dict.fromkeys(candidates, math.inf)
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            for name, run in candidates.items():
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_:
                    best[name] = min(best[name], time.perf_counter() - start)
    return best


def block_rates(device: torch.device, levels: list[str], rounds: int = 6) -> dict[str, float]:
    """GFLOP/s of ViT-B transformer blocks (qkv, attention, output projection, MLP; BLOCKS)
    per level, interleaved, each level's best round kept."""
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

    def blocks(level: str) -> None:
        with matmul_precision(level):
            for x in inputs:
                block(x)

    best = _interleaved(
        device, {level: functools.partial(blocks, level) for level in levels}, rounds
    )
    # 12 WIDTH² multiply-adds per token in the projections and MLP, 2 t WIDTH in attention.
    flops = sum(2 * b * t * WIDTH * (12 * WIDTH + 2 * t) for b, t in BLOCKS)
    return {level: flops / seconds / 1e9 for level, seconds in best.items()}


EPILOGUES = ("post-op", "separate")


def epilogue_rates(device: torch.device, level: str, rounds: int = 6) -> dict[str, float]:
    """GFLOP/s of a ViT-B block's three float32 linears with an epilogue (out_proj and c_proj
    with the residual add, c_fc with SiLU; BLOCKS' token rows) under the matmul mode
    ``level``, through oneDNN's post-ops and as torch's matmul with the epilogue after it."""
    from clipbench.fused import linear_act, linear_add  # fused imports this module

    generator = torch.Generator().manual_seed(0)
    shapes = {"out": (WIDTH, WIDTH), "fc": (4 * WIDTH, WIDTH), "proj": (WIDTH, 4 * WIDTH)}
    w = {name: torch.randn(n, k, generator=generator) / k**0.5 for name, (n, k) in shapes.items()}
    bias = {name: torch.randn(n, generator=generator) for name, (n, _) in shapes.items()}
    inputs = [torch.randn(b * t, WIDTH, generator=generator) for b, t in BLOCKS]

    def layers(post_op: bool) -> None:
        with matmul_precision(level):
            for x in inputs:
                x = linear_add(x, x, w["out"], bias["out"], post_op=post_op)
                hidden = linear_act(x, w["fc"], bias["fc"], "silu", post_op=post_op)
                linear_add(hidden, x, w["proj"], bias["proj"], post_op=post_op)

    candidates = {name: functools.partial(layers, name == "post-op") for name in EPILOGUES}
    best = _interleaved(device, candidates, rounds)
    flops = sum(2 * b * t * 9 * WIDTH**2 for b, t in BLOCKS)
    return {name: flops / seconds / 1e9 for name, seconds in best.items()}


def fastest_level(rates: dict[str, float], default: str = "highest") -> str:
    """The fastest candidate, where it beats ``default`` by FASTER_BY; else ``default``."""
    level = max(rates, key=rates.__getitem__)
    return level if rates[level] >= FASTER_BY * rates[default] else default


def _kept_choice(
    device: torch.device,
    candidates: list[str],
    topic: str = "fp32-matmul",
    rates: Callable[[], dict[str, float]] | None = None,
    context: tuple[str, ...] = (),
) -> str:
    """:func:`fastest_level` of ``candidates`` (the first the default) by ``rates`` (default: the
    matmul modes' block rates), timed once and kept in the cache folder under ``topic``, keyed
    by the device, torch, the thread count, the candidates and ``context``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_identity()
    threads = str(torch.get_num_threads())
    key = "\0".join([name, torch.__version__, threads, *candidates, *context])
    path = cache_dir() / topic / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        kept = json.loads(path.read_text())
        if kept["level"] in candidates:
            return kept["level"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with cpu_compute_slot(device.type):  # timed alone, not beside another job's model
        measured = block_rates(device, candidates) if rates is None else rates()
    level = fastest_level(measured, candidates[0])
    log.info("float32 %s choices, GFLOP/s %s: %s kept", topic, measured, level)
    try:
        with atomic_path(path) as tmp:  # concurrent jobs never read half a file
            tmp.write_text(json.dumps({"level": level, "gflops": measured}))
    except OSError as exc:  # e.g. a read-only cache folder: timed again next time
        log.debug("float32 %s choice not kept (%s)", topic, exc)
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


@functools.cache
def fp32_post_ops(device: torch.device) -> bool:
    """Whether ``fp32``'s fused linears take their epilogue as oneDNN's post-op (else torch's
    matmul, then the epilogue; see the module docstring): timed once per machine and kept."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return True  # nothing to choose: the fused paths run on CPU only
    level = fp32_matmul_level(device)
    rates = functools.partial(epilogue_rates, device, level)
    choice = _kept_choice(device, list(EPILOGUES), "fp32-epilogues", rates, context=(level,))
    return choice == "post-op"
