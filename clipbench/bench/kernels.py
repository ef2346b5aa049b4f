"""Matmul peaks and each encoder tower's throughput as the workflow runs it, as a share of the
peak of the kernels it runs, measured in the same run; and the reduced-precision mechanisms
side by side, so each device's choice in :mod:`clipbench.precision` is a measurement."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from clipbench.allocator import keep_freed_memory
from clipbench.batching import CPU_TOKENS_PER_BATCH, batch_sizes
from clipbench.fp32_modes import matmul_precision
from clipbench.fused import (
    fuse_attention_pools,
    fuse_convolutional_tower,
    fuse_patch_embeddings,
    fuse_transformer_blocks,
)
from clipbench.precision import Precision, native_reduced, resolve_precision

# A typical Pokémon BLIP caption ("a drawing of a green pokemon with red eyes") is ~12 tokens.
CAPTION = "a cartoon drawing of a small yellow pokemon with red eyes"
WIDTH = 768  # ViT-B's, and BERT-base's


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# On a GPU each timing spans back-to-back calls that last about this long: one synchronised
# call of a sub-millisecond GEMM would time the launch and the synchronisation as well.
GPU_SPAN_S = 0.05


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of one call over ``repeats`` timings after one warm-up call (shared
    machines are noisy: the best is the least disturbed)."""
    fn()
    sync(device)
    calls = 1
    if device.type == "cuda":  # sized by a second call: the first one tunes and allocates
        start = time.perf_counter()
        fn()
        sync(device)
        calls = min(100, max(1, round(GPU_SPAN_S / (time.perf_counter() - start))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def peak_paths(device: torch.device) -> dict[str, tuple[torch.dtype, str]]:
    """GEMM paths by name: (dtype, float32 matmul precision)."""
    paths = {
        "fp32": (torch.float32, "highest"),
        "fp32 matmul high": (torch.float32, "high"),
        "fp32 matmul medium": (torch.float32, "medium"),
        "bf16": (torch.bfloat16, "highest"),
    }
    if device.type == "cuda":
        paths["fp16"] = (torch.float16, "highest")
    return paths


def peak_for(policy: Precision) -> str:
    """The GEMM path whose peak a tower at ``policy`` is measured against."""
    if policy.name in ("bf16", "fp16"):
        return policy.name
    return {"highest": "fp32", "high": "fp32 matmul high", "medium": "fp32 matmul medium"}[
        policy.matmul
    ]


def gemm_shapes(squares: list[int]) -> list[tuple[int, int, int]]:
    """(m, k, n) of the GEMMs the peak is searched over: squares, and the shapes the towers
    run themselves, which can beat every square (2-core AMX Xeon, bf16: 2048³ 2.1 TFLOP/s,
    ViT-B's qkv projection at batch_size auto, 3200 × 768 × 2304, 2.7): a peak over squares
    alone would overstate every share."""
    shapes = [(n, n, n) for n in squares]
    for rows in sorted(set(CPU_TOKENS_PER_BATCH.values())):
        for k, n in ((WIDTH, 3 * WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)):
            shapes.append((rows, k, n))
    return shapes


def gemm_peaks(
    device: torch.device, shapes: list[tuple[int, int, int]], repeats: int
) -> list[dict]:
    """Per GEMM path, the best GFLOP/s over ``shapes`` and repeats, the shape that reached it,
    and its error against float64 on a 512³ sample."""
    rows = []
    a64 = torch.randn(512, 512, dtype=torch.float64)
    b64 = torch.randn(512, 512, dtype=torch.float64)
    exact = a64 @ b64
    for name, (dtype, level) in peak_paths(device).items():
        # A reduced precision the CPU only emulates runs no tower at `auto`; its GEMM runs at a
        # few GFLOP/s on one thread (2-core Zen 3, AVX2: past 20 minutes for these shapes), so
        # the smallest shape shows what it costs.
        emulated = dtype != torch.float32 and native_reduced(device) is None
        with matmul_precision(level):
            best, best_shape = 0.0, ""
            for m, k, n in [min(shapes, key=lambda s: s[0] * s[1] * s[2])] if emulated else shapes:
                a = torch.randn(m, k, device=device, dtype=dtype)
                b = torch.randn(k, n, device=device, dtype=dtype)
                gflops = 2 * m * k * n / timed(lambda a=a, b=b: a @ b, device, repeats) / 1e9
                if gflops > best:
                    best, best_shape = gflops, f"{m}x{k}x{n}"
            approx = (a64.to(device, dtype) @ b64.to(device, dtype)).double().cpu()
        error = float((approx - exact).abs().max() / exact.abs().max())
        rows.append(
            {
                "section": "peak",
                "name": name,
                "gflops": best,
                "shape": best_shape,
                "relative_error": error,
                "emulated": emulated,
            }
        )
    return rows


def model_cases(device: torch.device, channels_last: bool):
    """(name, kind, owner module, callable, input maker(batch), convolutional) for each encoder
    tower, random weights."""
    import open_clip
    import torchvision
    from transformers import BertConfig, BertModel

    from clipbench.kinds.open_clip import encode_text_truncated

    def image_input(size):
        def make(batch):
            x = torch.randn(batch, 3, size, size, device=device)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        return make

    for arch in ("RN50", "ViT-B-32", "ViT-B-16"):
        # QuickGELU, as OpenAI's weights were trained (and as the workflow builds them).
        model = open_clip.create_model(arch, force_quick_gelu=True).to(device).eval()
        visual = model.visual
        conv = arch.startswith("RN")
        if channels_last and conv:
            visual = visual.to(memory_format=torch.channels_last)
        yield f"clip {arch} image", "image", visual, visual, image_input(224), conv
        if arch == "ViT-B-32":
            tokens = open_clip.get_tokenizer(arch)([CAPTION])[0].to(device)

            def text_input(batch, tokens=tokens):
                return tokens.expand(batch, -1).contiguous()

            for label in ("padded to 77", "truncated"):
                # A model each: the fast paths change a model in place.
                text = open_clip.create_model(arch, force_quick_gelu=True).to(device).eval()
                run = (
                    text.encode_text
                    if label.startswith("padded")
                    else (lambda t, text=text: encode_text_truncated(text, t))
                )
                yield f"clip text, {label}", "text", text, run, text_input, False
    resnet = torchvision.models.resnet50().to(device).eval()
    if channels_last:
        resnet = resnet.to(memory_format=torch.channels_last)
    yield "torchvision resnet50", "image", resnet, resnet, image_input(224), True
    bert = BertModel(BertConfig()).to(device).eval()
    n_tokens = 14  # [CLS] + the caption's word pieces + [SEP]

    for label, length in (
        ("bert-base, dynamic padding", n_tokens),
        ("bert-base, padded to 77", 77),
    ):

        def bert_input(batch, length=length):
            ids = torch.randint(1000, 30000, (batch, length), device=device)
            mask = torch.zeros_like(ids)
            mask[:, :n_tokens] = 1
            return ids, mask

        yield (
            label,
            "text",
            bert,
            lambda x, bert=bert: bert(input_ids=x[0], attention_mask=x[1]),
            bert_input,
            False,
        )


def flops_per_item(module, make_input) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # With autograd on, nn.MultiheadAttention skips its fused inference kernel, which the
    # counter cannot see into: the count then includes the attention projections.
    with torch.enable_grad(), counter:
        module(make_input(1))
    return float(counter.get_total_flops())


def _cast_input(x, dtype: torch.dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    return x


def model_throughput(
    device: torch.device, batch: int | str, repeats: int, precision: str, channels_last: bool
) -> list[dict]:
    """Each tower run as the workflow runs it at ``precision`` (its :class:`Precision` on this
    device), at ``batch`` or, for "auto", at the batch ``batch_size: auto`` picks for it."""
    policy = resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # as an encode job does
    rows = []
    for name, kind, owner, module, make_input, conv in model_cases(device, channels_last):
        grid = getattr(owner, "grid_size", None) if kind == "image" else None
        tokens = None if grid is None else grid[0] * grid[1] + 1
        auto = batch_sizes("auto", device.type, conv, tokens, policy.reduced)[kind == "text"]
        size = auto if batch == "auto" else int(batch)
        fast = policy.fast_paths and device.type == "cpu"  # what Encoder.set_precision swaps in
        if fast:  # the projections the stock pool computes and discards are not work done
            fuse_attention_pools(owner)
        flops = flops_per_item(module, make_input)  # else on the stock modules
        x = make_input(size)
        if fast:
            fuse_transformer_blocks(owner)
            fuse_patch_embeddings(owner)
            if conv:
                module = fuse_convolutional_tower(module)
        if policy.cast_weights:
            owner.to(policy.dtype)
            module = module.to(policy.dtype) if isinstance(module, torch.nn.Module) else module
            x = _cast_input(x, policy.dtype)

        with policy.context():  # entered once, as encode does around all its batches
            seconds = timed(lambda module=module, x=x: module(x), device, repeats)
        rows.append(
            {
                "section": "model",
                "name": name,
                "kind": kind,
                "precision": precision,
                "ran": policy.name,
                "peak": peak_for(policy),
                "batch": size,
                "gflop_per_item": flops / 1e9,
                "items_per_s": size / seconds,
                "gflops": flops * size / seconds / 1e9,
            }
        )
    return rows


def mechanisms(device: torch.device, repeats: int, batch: int = 32) -> list[dict]:
    """ViT-B-32's image tower at the device's reduced precision through each mechanism: the
    weights cast, autocast under no_grad (its weight-cast cache on), autocast under
    inference_mode (cache off). What :mod:`clipbench.precision` chooses rests on this."""
    import open_clip

    from clipbench.precision import native_reduced

    name = native_reduced(device)
    if name is None:
        return []
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    rows = []
    for label in ("cast weights, inference_mode", "autocast, no_grad", "autocast, inference_mode"):
        visual = open_clip.create_model("ViT-B-32", force_quick_gelu=True).visual.to(device).eval()
        x = torch.randn(batch, 3, 224, 224, device=device)
        if label.startswith("cast"):
            visual.to(dtype)
            x = x.to(dtype)
            grad, autocast = torch.inference_mode, False
        else:
            grad, autocast = (
                torch.no_grad if "no_grad" in label else torch.inference_mode,
                True,
            )

        with grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            seconds = timed(lambda visual=visual, x=x: visual(x), device, repeats)
        rows.append(
            {
                "section": "mechanism",
                "name": f"clip ViT-B-32 image, {name}: {label}",
                "batch": batch,
                "items_per_s": batch / seconds,
            }
        )
    return rows


def epilogues(device: torch.device, repeats: int) -> list[dict]:
    """ViT-B's projections with the epilogues a tower needs, in bf16 at the token rows of a
    batch_size auto batch (ViT-B-32: 64 images x 50 tokens): plain, as oneDNN fuses them
    (post-ops), and on the AMX tiles of clipbench/linear.c where this CPU has them (c_fc also
    with its LayerNorm computed as the tiles pack x, as the tower runs it).
    :class:`clipbench.fused.FusedBlock` takes the tiles for the three with an epilogue;
    this is why."""
    from clipbench.fused import (
        linear,
        linear_act,
        linear_add,
        linear_library,
        pack_for_tiles,
        tile_linear,
    )

    if device.type != "cpu":
        return []
    tokens, gen = CPU_TOKENS_PER_BATCH["bf16"], torch.Generator().manual_seed(0)
    cases = {  # k, n, epilogue, residual, the LayerNorm before it
        "qkv": (WIDTH, 3 * WIDTH, "none", False, False),
        "out_proj + residual": (WIDTH, WIDTH, "none", True, False),
        "c_fc + SiLU": (WIDTH, 4 * WIDTH, "silu", False, False),
        "ln_2, c_fc + SiLU": (WIDTH, 4 * WIDTH, "silu", False, True),
        "c_proj + residual": (4 * WIDTH, WIDTH, "none", True, False),
    }
    rows = []
    for label, (k, n, act, residual, normed) in cases.items():
        x = torch.randn(tokens, k, generator=gen).bfloat16()
        w = (torch.randn(n, k, generator=gen) / k**0.5).bfloat16()
        b = torch.randn(n, generator=gen).bfloat16()
        other = torch.randn(tokens, n, generator=gen).bfloat16() if residual else None
        norm = torch.nn.LayerNorm(k).bfloat16() if normed else None

        def before(x, norm=norm):  # what the tower runs ahead of the GEMM
            return x if norm is None else norm(x)

        paths = {"oneDNN, plain": lambda x=x, w=w, b=b: linear(before(x), w, b)}
        if residual:
            paths["oneDNN post-op"] = lambda x=x, w=w, b=b, o=other: linear_add(before(x), o, w, b)
        elif act != "none":
            paths["oneDNN post-op"] = lambda x=x, w=w, b=b, a=act: linear_act(before(x), w, b, a)
        if linear_library() is not None:
            packed = pack_for_tiles(w)
            paths["AMX tiles (linear.c)"] = lambda x=x, p=packed, b=b, a=act, o=other: tile_linear(
                before(x), p, b, a, o
            )
            if normed:
                paths["AMX tiles, LayerNorm as x is packed"] = (
                    lambda x=x, p=packed, b=b, a=act, m=norm: tile_linear(x, p, b, a, norm=m)
                )
        with torch.inference_mode():
            for path, run in paths.items():
                seconds = timed(run, device, repeats)
                rows.append(
                    {
                        "section": "epilogue",
                        "name": f"ViT-B {label}: {path}",
                        "shape": f"{tokens}x{k}x{n}",
                        "peak": "bf16",
                        "gflops": 2 * tokens * k * n / seconds / 1e9,
                    }
                )
    return rows
