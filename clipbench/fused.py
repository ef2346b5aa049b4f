"""Inference fast paths for the towers' common blocks on CPU, where AMX/AVX-512 GEMMs are so
fast that the work between them decides the speed.

Measured on a 2-core AMX Xeon, ViT-B-16 (QuickGELU, as OpenAI's weights) at bf16, batch 32:
20.9 img/s stock; 23.7 with scaled-dot-product attention; 32.9 with the activation computed
in the GEMM's epilogue; 34.7 with the residual adds there too. So an open_clip
``ResidualAttentionBlock`` is replaced, weight for weight, by :class:`FusedBlock`:

- attention through ``F.scaled_dot_product_attention`` (a fused flash kernel on CPU) instead
  of ``nn.MultiheadAttention``'s separate matmul/softmax/matmul, and unmasked bf16
  attention on AMX CPUs through clipbench/attention.c (:func:`self_attention`);
- ``c_fc`` + activation as one oneDNN linear with an eltwise post-op: GELU directly; QuickGELU
  ``x·σ(1.702x)`` as SiLU on ``1.702·x`` (``c_fc`` scaled by 1.702, ``c_proj`` by 1/1.702: the
  same function, one fused op instead of three passes);
- the residual adds (and a LayerScale, folded into the weights) as the GEMMs' sum post-op;
  in float32 both epilogues run after torch's GEMM instead where that times faster on the
  machine (:func:`clipbench.fp32_modes.fp32_post_ops`: MKL beats oneDNN on a Zen 3);
- in bf16 on AMX CPUs, those three linears with their epilogues (SiLU, residual add) through
  clipbench/linear.c (:func:`tile_linear`), whose epilogue costs less than oneDNN's post-ops:
  ViT-B-32 144 → 168 img/s, ViT-B-16 33.6 → 37.3 (2-core AMX Xeon, batch_size auto); and
  ``ln_2`` computed as c_fc packs its input, instead of as a pass of its own: ViT-B-32 +9-10%,
  ViT-B-16 +7% (alternated).

A ViT's patch embedding (a convolution whose kernel is its stride) runs as one GEMM over the
patches (:class:`PatchEmbedding`). Convolutional towers fold each eval-mode BatchNorm into the
convolution before it and run the
ReLU that follows as the convolution's post-op (:func:`fuse_convolutions`); CLIP's ResNets
run their stem and first two stages a few images at a time (:class:`SubBatched`) and end in
an attention pool that keeps only its first token, and :class:`FusedAttentionPool`
computes only that token's query and output projection.

Every fast path is checked against the stock module in the tests, at each precision's
tolerance; a block that does not match the pattern exactly is left as it is.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from clipbench import native
from clipbench.fp32_modes import fp32_post_ops

QUICK_GELU_ALPHA = 1.702


@functools.cache
def _mkldnn_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX-512 or AVX-NE-CONVERT): without them
    (an AVX2 Zen 3, say) its fused bf16 ops refuse to run, and torch's own ops compute bf16."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _mkldnn(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _mkldnn_bf16()))
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``linear(x)``; in bf16 as oneDNN's linear itself rather than through ``addmm``: the qkv
    projection so makes ViT-B-32 6% and ViT-B-16 8% faster (2-core AMX Xeon); no gain in
    float32, which keeps ``F.linear``."""
    if _mkldnn(x) and x.dtype == torch.bfloat16:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def linear_act(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str, post_op: bool = True
) -> torch.Tensor:
    """``act(linear(x))`` for act in gelu, gelu_tanh, silu: as oneDNN's linear with the
    activation as its post-op where ``post_op`` and oneDNN serves ``x``, else torch's."""
    if post_op and _mkldnn(x):
        attr, algorithm = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}.get(
            act, ("swish", "")
        )
        return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)
    y = F.linear(x, w, b)
    if act == "silu":
        return F.silu(y, inplace=True)
    return F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")


def linear_add(
    x: torch.Tensor, other: torch.Tensor, w: torch.Tensor, b: torch.Tensor, post_op: bool = True
) -> torch.Tensor:
    """``other + linear(x)``: the add as oneDNN's post-op where ``post_op`` and oneDNN serves
    ``x``, else accumulated by ``addmm``."""
    if post_op and _mkldnn(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    return (
        torch.addmm(other.flatten(0, -2), x.flatten(0, -2), w.t(), beta=1).add_(b).view(other.shape)
    )


def _bf16_library(name: str, signature: list, supported: str) -> ctypes.CDLL | None:
    """clipbench/<name>.c built, where its export ``supported()`` says the CPU and OS run it,
    with its entry points ``name(*signature, part, parts)`` and ``<name>_threads(*signature,
    threads)``; else None."""
    lib = native.load(name, native.OPENMP_FLAGS)
    if lib is None or not getattr(lib, supported)():
        return None
    native.declare_split(lib, name, signature, ctypes.c_int)
    return lib


_POINTER, _INTEGER = ctypes.c_void_p, ctypes.c_int64


@functools.cache
def attention_library() -> ctypes.CDLL | None:
    """clipbench/attention.c (:func:`self_attention`)."""
    signature = [_POINTER, _POINTER] + [_INTEGER] * 4 + [ctypes.c_float]
    return _bf16_library("attention", signature, "attention_supported")


@functools.cache
def linear_library() -> ctypes.CDLL | None:
    """clipbench/linear.c (:func:`tile_linear`)."""
    x_and_norm = [_POINTER, _INTEGER, _INTEGER, _POINTER, _POINTER, ctypes.c_float]
    weight_and_epilogue = [_POINTER, _INTEGER, _POINTER, _POINTER, _INTEGER, _POINTER]
    return _bf16_library("linear", x_and_norm + weight_and_epilogue, "amx_supported")


def self_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q kᵀ / √d) v per head from the qkv projection (batch, length, 3·width), as
    (batch, length, width). In bf16 on a CPU with AMX or AVX512-BF16 one C kernel per (image,
    head) runs it from the cache (clipbench/attention.c): on a 2-core AMX Xeon a ViT-B-32 layer
    (50-token heads) in 1.6 ms against torch's flash kernel's 5.6–6.6, a ViT-B-16 one (197
    tokens) in 3.0 against 7.0–7.9; on a 2-core Zen 4 EPYC 4.4 against 13.0 and 7.8 against
    22.5 (batch_size auto); elsewhere that flash kernel."""
    batch, length, triple = qkv.shape
    width = triple // 3
    dim = width // heads
    if (
        qkv.dtype == torch.bfloat16
        and qkv.device.type == "cpu"
        and qkv.is_contiguous()
        and not (torch.is_grad_enabled() and qkv.requires_grad)
        and dim % 32 == 0
        and dim <= 256
        and (lib := attention_library()) is not None
    ):
        out = qkv.new_empty(batch, length, width)
        args = (qkv.data_ptr(), out.data_ptr(), batch, length, heads, dim, dim**-0.5)
        if not any(native.run_split(lib, "attention", args, torch.get_num_threads())):
            return out
    q, k, v = qkv.view(batch, length, 3, heads, dim).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)


TILE_ACTIVATIONS = {"none": 0, "silu": 1}  # clipbench/linear.c's epilogues


def pack_for_tiles(w: torch.Tensor) -> torch.Tensor:
    """A (n, k) weight in clipbench/linear.c's layout: [n/32][k/32][2][16][16][2], so that each
    16-column, 32-deep slice is one contiguous tile, its pairs along k interleaved."""
    n, k = w.shape
    return w.reshape(n // 32, 2, 16, k // 32, 16, 2).permute(0, 3, 1, 4, 2, 5).contiguous()


def tiles_serve(x: torch.Tensor, w: torch.Tensor, act: str, other: torch.Tensor | None) -> bool:
    """Whether :func:`tile_linear` runs ``linear(x, w)`` (then ``act``, then ``+ other``)."""
    n, k = w.shape
    return (
        x.dtype == w.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.is_contiguous()
        and x.shape[-1] == k
        and k % 32 == 0
        and n % 32 == 0
        and act in TILE_ACTIVATIONS
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and (
            other is None
            or (
                other.dtype == torch.bfloat16
                and other.is_contiguous()
                and other.shape == (*x.shape[:-1], n)
            )
        )
        and linear_library() is not None
    )


def row_norm_fusable(norm: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`tile_linear` computes ``norm`` (a LayerNorm over x's last dimension, in
    float32 as torch's own and open_clip's are, rounded once to x's dtype) as it packs x."""
    from open_clip.transformer import LayerNorm, LayerNormFp32

    return (
        type(norm) in (nn.LayerNorm, LayerNorm, LayerNormFp32)
        and norm.normalized_shape == (x.shape[-1],)
        and norm.weight is not None
        and norm.bias is not None
    )


def tile_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    b: torch.Tensor,
    act: str = "none",
    other: torch.Tensor | None = None,
    norm: nn.LayerNorm | None = None,
) -> torch.Tensor | None:
    """``act(linear(norm(x))) (+ other)`` in bf16 by clipbench/linear.c from the weight as
    :func:`pack_for_tiles` lays it out (where :func:`tiles_serve`, and ``norm``, a LayerNorm,
    where :func:`row_norm_fusable`), the LayerNorm as x is packed, the epilogue on each block
    as it leaves the tiles; None where the kernel declines. ViT-B (2-core AMX Xeon, 3200 token
    rows): c_fc with SiLU 1.9 TFLOP/s against oneDNN's post-op 1.4-1.7, c_proj and out_proj
    with the residual 2.0-2.1 against 1.6-1.9; the plain qkv projection stays with oneDNN
    (2.4 against 2.1 here). The bench's ``mechanisms`` section measures these."""
    k, n = x.shape[-1], packed.shape[0] * 32
    m = x.numel() // k
    out = x.new_empty(*x.shape[:-1], n)
    bias = b.to(torch.bfloat16).contiguous()  # these held until the call returns
    norm_args = (None, None, 0.0)
    if norm is not None:
        norm_weight, norm_bias = (p.detach().float().contiguous() for p in (norm.weight, norm.bias))
        norm_args = (norm_weight.data_ptr(), norm_bias.data_ptr(), norm.eps)
    args = (x.data_ptr(), m, k, *norm_args, packed.data_ptr(), n, bias.data_ptr())
    args += (None if other is None else other.data_ptr(), TILE_ACTIVATIONS[act], out.data_ptr())
    if any(native.run_split(linear_library(), "linear", args, torch.get_num_threads())):
        return None
    return out


def _activation(module: nn.Module) -> str | None:
    from open_clip.transformer import QuickGELU

    if isinstance(module, QuickGELU):
        return "quick_gelu"
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    return None


def _scale(module: nn.Module) -> torch.Tensor | None:
    """A LayerScale's gamma, None for Identity; anything else is not fusable."""
    from open_clip.transformer import LayerScale

    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, LayerScale):
        return module.gamma.detach()
    raise TypeError


def fusable(block: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn = block.attn
    try:
        _scale(block.ls_1), _scale(block.ls_2)
    except TypeError:
        return False
    return (
        attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and set(block.mlp._modules) == {"c_fc", "gelu", "c_proj"}
        and _activation(block.mlp.gelu) is not None
    )


class FusedBlock(nn.Module):
    """An open_clip ``ResidualAttentionBlock`` (pre-norm, batch-first) for inference, with its
    weights rearranged for the fused kernels; same inputs, same function."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        self.heads = block.attn.num_heads
        act = _activation(block.mlp.gelu)
        self.act = "silu" if act == "quick_gelu" else act
        dtype = block.mlp.c_fc.weight.dtype
        self._packs: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}

        def derived(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.detach().to(dtype).contiguous())

        attn, fc, proj = block.attn, block.mlp.c_fc, block.mlp.c_proj
        derived("in_w", attn.in_proj_weight)
        derived("in_b", attn.in_proj_bias)
        # Rearranged in float32, then rounded once to the weights' dtype.
        out_w, out_b = attn.out_proj.weight.float(), attn.out_proj.bias.float()
        fc_w, fc_b = fc.weight.float(), fc.bias.float()
        proj_w, proj_b = proj.weight.float(), proj.bias.float()
        if act == "quick_gelu":  # x·σ(αx) = silu(αx)/α: α into c_fc, 1/α into c_proj
            fc_w, fc_b = fc_w * QUICK_GELU_ALPHA, fc_b * QUICK_GELU_ALPHA
            proj_w = proj_w / QUICK_GELU_ALPHA
        if (gamma := _scale(block.ls_1)) is not None:  # LayerScale: a per-output factor
            out_w, out_b = out_w * gamma.float()[:, None], out_b * gamma.float()
        if (gamma := _scale(block.ls_2)) is not None:
            proj_w, proj_b = proj_w * gamma.float()[:, None], proj_b * gamma.float()
        for name, value in (
            ("out_w", out_w),
            ("out_b", out_b),
            ("fc_w", fc_w),
            ("fc_b", fc_b),
            ("proj_w", proj_w),
            ("proj_b", proj_b),
        ):
            derived(name, value)

    def get_weight_dtype(self) -> torch.dtype:
        return self.fc_w.dtype

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        if k_x is not None or v_x is not None:
            raise ValueError("FusedBlock serves self-attention only")
        batch, length, width = q_x.shape
        # qkv stays with oneDNN: on the tiles, even with ln_1 packed in, ViT-B-32 ran 4% slower.
        qkv = linear(self.ln_1(q_x), self.in_w, self.in_b)
        if attn_mask is None:
            attended = self_attention(qkv, self.heads)
        else:
            q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            # nn.MultiheadAttention masks where a bool mask is True; SDPA attends there.
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = self._project("out", attended, other=q_x)
        hidden = self._project("fc", x, act=self.act, norm=self.ln_2)
        return self._project("proj", hidden, other=x)

    def _project(self, name: str, x, act: str = "none", other=None, norm=None):
        """``act(linear(norm(x))) (+ other)`` through weights ``<name>_w``, ``<name>_b``: on
        AMX tiles where they serve (the LayerNorm ``norm`` as x is packed), else oneDNN's
        fused linear."""
        w, b = getattr(self, f"{name}_w"), getattr(self, f"{name}_b")
        if tiles_serve(x, w, act, other) and (norm is None or row_norm_fusable(norm, x)):
            packed = self._packed(name, w)
            if (out := tile_linear(x, packed, b, act, other, norm)) is not None:
                return out
        if norm is not None:
            x = norm(x)
        # Measured per machine in float32 (MKL can beat oneDNN's post-ops: 2-core Zen 3).
        post_op = x.dtype != torch.float32 or fp32_post_ops(x.device)
        if other is not None:
            return linear_add(x, other, w, b, post_op)
        return linear(x, w, b) if act == "none" else linear_act(x, w, b, act, post_op)

    def _packed(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """``w`` packed for the tiles, once per weight tensor: again after a cast (a new
        tensor) or a copy into it (its version; inference tensors keep none). A second copy
        of those weights (ViT-B's three: 128 MB in bf16), kept for the speed."""
        version = -1 if w.is_inference() else w._version
        held = self._packs.get(name)
        if held is None or held[0] is not w or held[1] != version:
            held = (w, version, pack_for_tiles(w))
            self._packs[name] = held
        return held[2]


def _replace(module: nn.Module, matches, replacement) -> int:
    """Every submodule of ``module`` that ``matches`` swapped in place for ``replacement`` of
    it; returns how many."""
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, replacement(child))
                count += 1
    return count


def fuse_transformer_blocks(module: nn.Module) -> int:
    """Replace every fusable open_clip block under ``module`` in place; returns how many."""
    return _replace(module, fusable, FusedBlock)


def patchify_fusable(conv: nn.Module) -> bool:
    """A convolution whose kernel is its stride (a ViT's patch embedding), exactly."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == conv.stride
        and min(conv.kernel_size) > 1
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


@torch.fx.wrap
def patch_embedding(x, weight, bias, patch: tuple[int, int]):
    """The convolution as one GEMM over the image's non-overlapping patches (the rows and
    columns past the last whole patch dropped, as the convolution drops them); NCHW out."""
    n, channels, height, width = x.shape
    (ph, pw), gh, gw = patch, height // patch[0], width // patch[1]
    x = x[:, :, : gh * ph, : gw * pw]
    patches = x.reshape(n, channels, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
    y = linear(patches.reshape(n * gh * gw, channels * ph * pw), weight, bias)
    return y.view(n, gh, gw, -1).permute(0, 3, 1, 2)


class PatchEmbedding(nn.Module):
    """A ViT's patch embedding (``conv1``: kernel = stride) for inference as a GEMM over the
    patches, which oneDNN runs faster than the strided convolution: ViT-B-32 batch 64 10.3
    ms against 20.5 in bf16, batch 32 27.5 against 31.0 in float32; ViT-B-16 batch 16 2.3
    against 5.4 (2-core AMX Xeon). Same function."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.patch = tuple(conv.kernel_size)
        weight = conv.weight.detach().reshape(conv.out_channels, -1).contiguous()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_embedding(x, self.weight, self.bias, self.patch)


def fuse_patch_embeddings(module: nn.Module) -> int:
    """Replace every patch-embedding convolution under ``module`` in place; returns how many."""
    return _replace(module, patchify_fusable, PatchEmbedding)


POOL_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "c_proj"}


def pool_fusable(pool: nn.Module) -> bool:
    """open_clip's ``AttentionPool2d`` (ModifiedResNet's head) exactly."""
    return (
        type(pool).__name__ == "AttentionPool2d"
        and set(pool._modules) == POOL_PROJECTIONS
        and all(type(getattr(pool, name)) is nn.Linear for name in POOL_PROJECTIONS)
        and isinstance(getattr(pool, "positional_embedding", None), torch.Tensor)
        and isinstance(getattr(pool, "num_heads", None), int)
    )


@torch.fx.wrap
def attention_pool(x, position, q_w, q_b, kv_w, kv_b, out_w, out_b, heads: int):
    """The mean token's attention over itself and the feature map's positions, projected.
    One function, so that torch.fx traces it as one call (clipbench.fused.fuse_convolutions)."""
    n, width = x.shape[0], x.shape[1]
    tokens = x.flatten(2).transpose(1, 2)  # N, HW, C
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + position.to(x.dtype)
    q = linear(tokens[:, :1].contiguous(), q_w, q_b).view(n, 1, heads, -1).transpose(1, 2)
    kv = linear(tokens, kv_w, kv_b)
    k, v = kv.view(n, tokens.shape[1], 2, heads, width // heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(q, k, v).reshape(n, width)
    return linear(attended, out_w, out_b)


class FusedAttentionPool(nn.Module):
    """open_clip's ``AttentionPool2d`` for inference. It returns only the first (mean)
    token's output, but computes the query and output projections for every position: here
    only that token's are computed (CLIP RN50: 5% of the tower's FLOPs), and the key and value
    projections are one GEMM. Same function."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.heads = pool.num_heads

        def derived(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.detach().contiguous())

        derived("position", pool.positional_embedding)
        derived("q_w", pool.q_proj.weight)
        derived("q_b", pool.q_proj.bias)
        derived("kv_w", torch.cat([pool.k_proj.weight, pool.v_proj.weight]))
        derived("kv_b", torch.cat([pool.k_proj.bias, pool.v_proj.bias]))
        derived("out_w", pool.c_proj.weight)
        derived("out_b", pool.c_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention_pool(
            x,
            self.position,
            self.q_w,
            self.q_b,
            self.kv_w,
            self.kv_b,
            self.out_w,
            self.out_b,
            self.heads,
        )


def fuse_attention_pools(module: nn.Module) -> int:
    """Replace every open_clip attention pool under ``module`` in place; returns how many."""
    return _replace(module, pool_fusable, FusedAttentionPool)


class ConvAct(nn.Module):
    """A convolution (an eval-mode BatchNorm after it folded in), with the ReLU after it
    (``relu``) or the residual add and ReLU after it (``add``), as one oneDNN convolution with
    post-ops.

    oneDNN computes from its own blocked weight layout and reorders a plain weight into it on
    every call: a 256 × 256 × 3 × 3 bf16 weight takes 0.3 ms, more than the convolution itself
    at batch 1 (2-core AMX Xeon). The reordered weight is kept (the same bits come out, for
    any batch or image size) and made again when the weight tensor changes."""

    def __init__(self, conv: nn.Conv2d, add: bool, relu: bool = True):
        super().__init__()
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.add, self.relu = add, relu
        self._packed: tuple | None = None  # (weight, its version and channels, oneDNN's)

    def __getstate__(self):
        return {**super().__getstate__(), "_packed": None}  # oneDNN tensors do not copy

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        reorder = getattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", None)
        if reorder is None or w.dtype != x.dtype:
            return w
        version = -1 if w.is_inference() else w._version  # inference tensors keep none
        held = self._packed
        if held is None or held[0] is not w or held[1] != (version, x.shape[1]):
            args = (self.padding, self.stride, self.dilation, self.groups)
            held = (w, (version, x.shape[1]), reorder(w.to_mkldnn(), *args, list(x.shape)))
            self._packed = held
        return held[2]

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        args = (self.padding, self.stride, self.dilation, self.groups)
        if _mkldnn(x):
            weight = self.packed_weight(x)
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, *args, "relu" if self.relu else "none", [], ""
                )
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, weight, self.bias, *args, "add", None, "relu", [], ""
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if other is not None:
            y = y + other
        return F.relu(y) if self.relu else y


def _is_relu(node, modules) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return node.op in ("call_function", "call_method") and node.target in (
        F.relu,
        torch.relu,
        "relu",
    )


def _is_add(node) -> bool:
    import operator

    return node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)


def _plain_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.groups == 1
    )


def fuse_convolutions(module: nn.Module) -> nn.Module:
    """``module`` traced (torch.fx) with every BatchNorm folded into its convolution and each
    ReLU, or add-then-ReLU, that follows a convolution made its post-op. A module without
    convolutions, or that cannot be traced, comes back as it was."""
    from torch import fx
    from torch.fx.experimental.optimization import fuse

    kinds = list(module.modules())
    if not any(_plain_conv(m) for m in kinds) or not any(
        isinstance(m, nn.BatchNorm2d) for m in kinds
    ):
        return module  # e.g. a ViT's patch embedding: nothing to fold or fuse
    try:
        graph_module = fuse(module.eval())
    except Exception:  # noqa: BLE001 - data-dependent control flow: keep the stock module
        return module
    modules = dict(graph_module.named_modules())
    graph: fx.Graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or not _plain_conv(modules[node.target]):
            continue
        if len(node.users) != 1:
            continue
        (user,) = node.users
        conv = modules[node.target]
        if _is_relu(user, modules):
            _set(graph_module, node.target, ConvAct(conv, add=False))
            user.replace_all_uses_with(node)
            graph.erase_node(user)
        elif _is_add(user) and len(user.args) == 2 and len(user.users) == 1:
            (after,) = user.users
            if not _is_relu(after, modules):
                continue
            other = user.args[1] if user.args[0] is node else user.args[0]
            _set(graph_module, node.target, ConvAct(conv, add=True))
            with graph.inserting_before(user):
                fused = graph.call_module(node.target, (node.args[0], other))
            after.replace_all_uses_with(fused)
            graph.erase_node(after)
            graph.erase_node(user)
            graph.erase_node(node)
    modules = dict(graph_module.named_modules())
    for node in graph.nodes:  # the rest (e.g. a downsampling branch's): no post-op
        if node.op == "call_module" and _plain_conv(modules[node.target]):
            _set(graph_module, node.target, ConvAct(modules[node.target], add=False, relu=False))
    graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


EARLY_STAGE = "layer2"  # a ResNet's stem and first two stages (torchvision's, open_clip's)
SUB_BATCH_PIXELS = 4 * 224 * 224  # per part: 4 images at 224² (2 and 8 measured no better)


class SubBatched(nn.Module):
    """``late(early(x))``, ``early`` run on parts of the batch of about ``pixels`` input
    pixels each: a ResNet's first stages have the largest activations (CLIP RN50 at batch 16
    in bf16: 26 MB a tensor at 56²), which then stay in cache from one layer to the next,
    while the later stages, whose GEMMs want rows, see the whole batch. The activations scale
    with the pixels, so a larger input runs fewer images a part. Each image's result is the
    same either way."""

    def __init__(self, early: nn.Module, late: nn.Module, pixels: int):
        super().__init__()
        self.early, self.late, self.pixels = early, late, pixels

    def images_per_part(self, x: torch.Tensor) -> int:
        return max(1, self.pixels // (x.shape[-2] * x.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = self.images_per_part(x)
        if x.shape[0] <= images:
            return self.late(self.early(x))
        return self.late(torch.cat([self.early(part) for part in x.split(images)]))


def _stage(node) -> str | None:
    """The top-level submodule a traced node belongs to."""
    if node.op in ("call_module", "get_attr"):
        return node.target.split(".")[0]
    stack = node.meta.get("nn_module_stack")
    return next(iter(stack)).split(".")[0] if stack else None


def sub_batch_early_stages(
    module: nn.Module, stage: str = EARLY_STAGE, pixels: int = SUB_BATCH_PIXELS
) -> nn.Module:
    """A traced tower (as :func:`fuse_convolutions` returns it) as :class:`SubBatched`, cut
    after the last node of submodule ``stage``; as it was where it has no such stage, or
    where any value but that node's output crosses the cut."""
    from torch import fx

    if not isinstance(module, fx.GraphModule):
        return module
    nodes = list(module.graph.nodes)
    inside = [i for i, node in enumerate(nodes) if _stage(node) == stage]
    if not inside or sum(node.op == "placeholder" for node in nodes) != 1:
        return module
    cut = nodes[inside[-1]]
    early, late = fx.Graph(), fx.Graph()
    early_values: dict = {}
    for node in nodes[: inside[-1] + 1]:
        early_values[node] = early.node_copy(node, early_values.__getitem__)
    early.output(early_values[cut])
    late_values = {cut: late.placeholder("x")}
    for node in nodes[inside[-1] + 1 :]:
        for used in node.all_input_nodes:
            if used in late_values:
                continue
            if used.op != "get_attr":  # an activation of the early part: not a clean cut
                return module
            late_values[used] = late.node_copy(used)
        late_values[node] = late.node_copy(node, late_values.__getitem__)
    return SubBatched(fx.GraphModule(module, early), fx.GraphModule(module, late), pixels)


def fuse_convolutional_tower(module: nn.Module) -> nn.Module:
    """:func:`fuse_convolutions`, then, for CLIP's ResNets, :func:`sub_batch_early_stages`:
    RN50 bf16 at batch 16 99–103 → 111–121 img/s, float32 at batch 8 20.3 → 23.2 (2-core AMX
    Xeon, alternated medians). torchvision's resnet50, whose first stages have no
    anti-aliasing average pools, measured no gain (138 against 141, 146 against 151 at 32)."""
    from open_clip.modified_resnet import ModifiedResNet

    fused = fuse_convolutions(module)
    return sub_batch_early_stages(fused) if isinstance(module, ModifiedResNet) else fused


def _set(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
