"""The fused inference blocks compute what the stock modules compute (oracle tests)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench import fused as fused_module
from clipbench.embeddings import l2_normalize
from clipbench.encode import encode_images, encode_texts
from clipbench.fused import (
    ConvAct,
    FusedAttentionPool,
    FusedBlock,
    PatchEmbedding,
    SubBatched,
    attention_library,
    fusable,
    fuse_attention_pools,
    fuse_convolutional_tower,
    fuse_convolutions,
    fuse_patch_embeddings,
    fuse_transformer_blocks,
    linear,
    linear_act,
    linear_add,
    linear_library,
    pack_for_tiles,
    patchify_fusable,
    row_norm_fusable,
    self_attention,
    sub_batch_early_stages,
    tile_linear,
    tiles_serve,
)
from clipbench.kinds import load_encoder
from clipbench.precision import EMBEDDING_TOLERANCE, resolve_precision
from tests.conftest import spec_for
from tests.test_encode import CAPTIONS

CPU = torch.device("cpu")


def block(act, ls=None, width=64, heads=4):
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    torch.manual_seed(0)
    layer = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"), "quick": QuickGELU}[act]
    made = ResidualAttentionBlock(width, heads, act_layer=layer, ls_init_value=ls).eval()
    with torch.no_grad():  # biases away from 0, LayerScale away from 1e-5: every path counts
        for p in made.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.5)
    return made


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "quick"])
@pytest.mark.parametrize("ls", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("post_ops", [True, False])  # float32: as fp32_post_ops measures
def test_fused_block_equals_the_stock_block(act, ls, dtype, causal, post_ops, monkeypatch):
    monkeypatch.setattr(fused_module, "fp32_post_ops", lambda device: post_ops)
    stock = block(act, ls).to(dtype)
    assert fusable(stock)
    fused = FusedBlock(stock)
    x = torch.randn(3, 7, 64, dtype=dtype)
    mask = None
    if causal:  # open_clip's text mask: -inf above the diagonal
        mask = torch.full((7, 7), float("-inf")).triu(1)
    with torch.inference_mode():
        want = stock(x, attn_mask=mask).float()
        got = fused(x, attn_mask=mask).float()
    # bf16 rounds differently in fused epilogues: compare as the encode tolerance does.
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got, want, atol=tolerance * want.abs().max(), rtol=0)


def reference_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention in float64, written out."""
    batch, length, triple = qkv.shape
    q, k, v = qkv.double().view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(batch, length, triple // 3)


def flash_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, triple = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return attended.transpose(1, 2).reshape(batch, length, triple // 3)


needs_attention_kernel = pytest.mark.skipif(
    attention_library() is None,
    reason="no AVX512-BF16 CPU (or no C compiler): torch's kernel runs",
)


@needs_attention_kernel
@pytest.mark.parametrize(
    "batch,length,heads,dim",
    [
        (2, 50, 12, 64),
        (1, 197, 3, 64),
        (3, 1, 2, 32),
        (2, 16, 2, 32),
        (2, 17, 1, 96),
        (1, 33, 2, 128),
        (1, 64, 1, 256),
        (2, 7, 4, 160),
    ],
)
def test_bf16_attention_is_as_close_to_exact_as_torchs_flash_kernel(batch, length, heads, dim):
    torch.manual_seed(length + dim)
    qkv = (torch.randn(batch, length, 3 * heads * dim) * 2).bfloat16()
    exact = reference_attention(qkv, heads)
    got = self_attention(qkv, heads)
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    error = (got.double() - exact).abs()
    flash_error = (flash_attention(qkv, heads).double() - exact).abs()
    # Both round the probabilities and the output to bf16; the output's rounding dominates,
    # so a kernel error shows as a mean error above flash's (a 10% error in one exp
    # polynomial coefficient: 1.2-1.5x).
    assert float(error.max()) <= 1.5 * float(flash_error.max()) + 1e-6
    assert float(error.mean()) <= 1.1 * float(flash_error.mean()) + 1e-6


@needs_attention_kernel
def test_bf16_attention_with_scores_spread_past_floats_normal_range():
    """Scores hundreds apart: most probabilities underflow (the kernel makes them 0 rather than
    subnormal); the result is still softmax attention to bf16 rounding."""
    torch.manual_seed(3)
    qkv = (torch.randn(2, 50, 3 * 2 * 64) * 12).bfloat16()
    exact = reference_attention(qkv, 2)
    error = (self_attention(qkv, 2).double() - exact).abs()
    flash_error = (flash_attention(qkv, 2).double() - exact).abs()
    assert float(error.max()) <= 1.5 * float(flash_error.max()) + 1e-6
    assert float(error.mean()) <= 1.1 * float(flash_error.mean()) + 1e-6


@needs_attention_kernel
def test_bf16_attention_gives_the_same_bits_however_its_units_are_split():
    from clipbench import native

    lib = attention_library()
    qkv = torch.randn(3, 50, 3 * 4 * 64).bfloat16()
    whole = self_attention(qkv, 4)
    for parts in (1, 2, 5):
        out = torch.empty_like(whole)
        args = (qkv.data_ptr(), out.data_ptr(), 3, 50, 4, 64, 64**-0.5)
        assert native.run_parts(lib.attention, args, parts) == [0] * parts
        assert torch.equal(out, whole)


@pytest.mark.parametrize(
    "dtype,dim,grad",
    [(torch.float32, 64, False), (torch.bfloat16, 16, False), (torch.bfloat16, 64, True)],
)
def test_attention_outside_the_kernels_shapes_is_torchs_flash_kernel(dtype, dim, grad):
    qkv = torch.randn(2, 9, 3 * 2 * dim, dtype=dtype, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        assert torch.equal(self_attention(qkv, 2), flash_attention(qkv, 2))


@pytest.mark.parametrize("heads", [4, 2])
def test_fused_block_with_heads_the_amx_kernel_serves_equals_the_stock_block(heads):
    stock = block("quick", heads=heads).to(torch.bfloat16)
    x = torch.randn(3, 50, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        want = stock(x).float()
        got = FusedBlock(stock)(x).float()
    torch.testing.assert_close(got, want, atol=0.05 * want.abs().max(), rtol=0)


needs_tiles = pytest.mark.skipif(
    linear_library() is None, reason="no AMX-BF16 CPU (or no C compiler): oneDNN runs"
)


def linear_case(m, k, n, residual, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).bfloat16()
    w = (torch.randn(n, k, generator=gen) / k**0.5).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16()
    other = torch.randn(m, n, generator=gen).bfloat16() if residual else None
    return x, w, b, other


def onednn_linear(x, w, b, act, other):
    """The path the tiles replace: oneDNN's fused linear (rounded to bf16), plus the residual."""
    y = linear(x, w, b) if act == "none" else linear_act(x, w, b, act)
    if other is None:
        return y
    return linear_add(x, other, w, b) if act == "none" else y + other


@needs_tiles
@pytest.mark.parametrize(
    "m,k,n,act,residual",
    [
        (300, 768, 3072, "silu", False),  # ViT-B's c_fc: 128-row chunks, one partial
        (300, 768, 768, "none", True),  # out_proj
        (33, 3072, 768, "none", True),  # c_proj: many weight slices, a partial row block
        (129, 288, 64, "silu", True),  # a partial weight slice (9 steps)
        (1, 32, 32, "none", False),
        (70, 64, 96, "silu", False),
    ],
)
def test_tile_linear_is_exact_up_to_its_bf16_rounding(m, k, n, act, residual):
    x, w, b, other = linear_case(m, k, n, residual, seed=m + k)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
    if act == "silu":
        exact = torch.nn.functional.silu(exact)
    if other is not None:
        exact = exact + other.double()
    got = tile_linear(x, pack_for_tiles(w), b, act, other)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == exact.shape
    error = (got.double() - exact).abs()
    # Summed in fp32, rounded once: within one bf16 ulp of the exact value (2^-8 relative),
    # bar fp32 accumulation noise where terms cancel.
    assert bool((error <= 2**-8 * exact.abs() + 1e-4).all())
    onednn_error = (onednn_linear(x, w, b, act, other).double() - exact).abs()
    assert float(error.max()) <= 1.05 * float(onednn_error.max()) + 1e-6
    assert float(error.mean()) <= 1.05 * float(onednn_error.mean()) + 1e-6


def layer_norm_case(k, offset, seed=0):
    """Rows far from zero mean (where a one-pass variance would cancel) and an affine part
    away from 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(k, eps=1e-5).bfloat16().requires_grad_(False)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(k, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(k, generator=gen))
    x = (offset + 3 * torch.randn(40, k, generator=gen)).bfloat16()
    return x, norm


def exact_layer_norm(x, norm):
    x = x.double()
    centred = x - x.mean(-1, keepdim=True)
    scaled = centred / (centred.square().mean(-1, keepdim=True) + norm.eps).sqrt()
    return scaled * norm.weight.double() + norm.bias.double()


@needs_tiles
@pytest.mark.parametrize("k,offset", [(64, 0.0), (64, 100.0), (768, 10.0)])
def test_the_layer_norm_packed_with_x_is_exact_up_to_its_bf16_rounding(k, offset):
    x, norm = layer_norm_case(k, offset, seed=k)
    identity = torch.eye(k, dtype=torch.bfloat16)  # out = the packed rows themselves
    got = tile_linear(x, pack_for_tiles(identity), torch.zeros(k), norm=norm).double()
    exact = exact_layer_norm(x, norm)
    # One rounding to bf16: half an ulp (2^-8 relative at most), bar float32 noise near zero.
    # A variance over k - 1 instead of k (0.8% at k = 64) or a dropped affine part fails it.
    assert bool(((got - exact).abs() <= 2**-8 * exact.abs() + 1e-5).all())
    with torch.inference_mode():  # and torch's own bf16 LayerNorm rounds to the same values
        assert float((got == norm(x).double()).float().mean()) > 0.99


@needs_tiles
def test_tile_linear_with_its_layer_norm_is_as_close_to_exact_as_torchs():
    x, norm = layer_norm_case(768, 1.0)
    _, w, b, _ = linear_case(40, 768, 3072, residual=False)
    exact = torch.nn.functional.silu(
        torch.nn.functional.linear(exact_layer_norm(x, norm), w.double(), b.double())
    )
    got = tile_linear(x, pack_for_tiles(w), b, "silu", norm=norm)
    with torch.inference_mode():
        torch_way = linear_act(norm(x), w, b, "silu")
    error, torch_error = ((y.double() - exact).abs() for y in (got, torch_way))
    assert float(error.max()) <= 1.05 * float(torch_error.max()) + 1e-6
    assert float(error.mean()) <= 1.05 * float(torch_error.mean()) + 1e-6


@needs_tiles
@pytest.mark.parametrize("normed", [False, True])
def test_tile_linear_gives_the_same_bits_however_its_rows_are_split(normed):
    from clipbench import native

    x, w, b, other = linear_case(300, 256, 96, residual=True)
    norm = layer_norm_case(256, 1.0)[1] if normed else None
    packed = pack_for_tiles(w)
    whole = tile_linear(x, packed, b, "silu", other, norm)
    weights = [p.detach().float() for p in (norm.weight, norm.bias)] if normed else []
    norm_args = (weights[0].data_ptr(), weights[1].data_ptr(), norm.eps) if normed else (0, 0, 0)
    for parts in (1, 2, 3, 7, 13):  # 13 parts of 10 row blocks: some parts have none
        out = torch.empty_like(whole)
        args = (x.data_ptr(), 300, 256, *norm_args, packed.data_ptr(), 96, b.data_ptr())
        args += (other.data_ptr(), 1, out.data_ptr())
        assert native.run_parts(linear_library().linear, args, parts) == [0] * parts
        assert torch.equal(out, whole)


def test_the_tiles_serve_bf16_inference_at_multiples_of_32_only():
    x, w, b, other = linear_case(5, 64, 96, residual=True)
    if linear_library() is None:
        assert not tiles_serve(x, w, "silu", other)
        return
    assert tiles_serve(x, w, "silu", other) and tiles_serve(x, w, "none", None)
    assert not tiles_serve(x.float(), w.float(), "none", None)
    assert not tiles_serve(x, w, "gelu", None)  # the kernel's epilogues: none and SiLU
    assert not tiles_serve(x[:, :48].contiguous(), w[:, :48].contiguous(), "none", None)
    assert not tiles_serve(x, w[:40], "none", None)
    assert not tiles_serve(x.t().contiguous().t(), w, "none", None)
    assert not tiles_serve(x, w, "none", other[:, :64])
    with torch.enable_grad():
        assert not tiles_serve(x.requires_grad_(), w, "none", None)


@needs_tiles
def test_a_fused_block_repacks_its_weights_after_a_copy_or_a_new_tensor():
    stock = block("quick", width=64).to(torch.bfloat16)
    fused, fresh = FusedBlock(stock), FusedBlock(stock)
    x = torch.randn(2, 50, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        fused(x)
        assert set(fused._packs) == {"out", "fc", "proj"}
        fused.fc_w.mul_(-1)  # in place: the same tensor, a new version
        fresh.fc_w.mul_(-1)
        assert torch.equal(fused(x), fresh(x))
        fused.proj_w = fused.proj_w * 2  # a new tensor (as a cast makes)
        fresh.proj_w.mul_(2)
        assert torch.equal(fused(x), fresh(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "patch,size,bias,channels_last",
    [
        ((16, 16), (64, 64), False, False),
        ((16, 16), (70, 75), True, False),
        ((4, 8), (32, 32), True, True),
    ],
)
def test_a_patch_embedding_as_a_gemm_equals_the_convolution(
    dtype, patch, size, bias, channels_last
):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, kernel_size=patch, stride=patch, bias=bias).eval()
    x = torch.randn(2, 3, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = conv.to(dtype)(x.to(dtype)).float()
        got = PatchEmbedding(conv)(x.to(dtype))
    assert got.dtype == dtype and got.shape == want.shape  # rows past the last patch dropped
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    torch.testing.assert_close(got.float(), want, atol=tolerance * want.abs().max(), rtol=0)


def test_only_convolutions_whose_kernel_is_their_stride_become_patch_embeddings():
    kept = [
        nn.Conv2d(3, 8, 1),  # 1 x 1 (a ResNet's): a GEMM already, left to oneDNN
        nn.Conv2d(3, 8, 3, stride=2),
        nn.Conv2d(3, 8, 4, stride=4, padding=1),
        nn.Conv2d(4, 8, 4, stride=4, groups=2),
        nn.Conv2d(3, 8, 4, stride=4, dilation=2),
    ]
    assert not any(patchify_fusable(conv) for conv in kept)
    holder = nn.Sequential(*kept, nn.Conv2d(3, 8, 4, stride=4))
    assert fuse_patch_embeddings(holder) == 1 and isinstance(holder[-1], PatchEmbedding)
    assert all(holder[i] is conv for i, conv in enumerate(kept))


def test_a_layer_norm_the_tiles_cannot_pack_runs_before_them():
    stock = block("quick", width=64).to(torch.bfloat16)
    stock.ln_2 = nn.LayerNorm(64, elementwise_affine=False).bfloat16()  # no weight to pack
    x = torch.randn(2, 50, 64, dtype=torch.bfloat16)
    assert not row_norm_fusable(stock.ln_2, x)
    assert row_norm_fusable(stock.ln_1, x) and not row_norm_fusable(stock.ln_1, x[..., :32])
    with torch.inference_mode():
        want = stock(x).float()
        got = FusedBlock(stock)(x).float()
    torch.testing.assert_close(got, want, atol=0.05 * want.abs().max(), rtol=0)


def test_blocks_that_differ_from_the_pattern_are_left_alone():
    from open_clip.transformer import ResidualAttentionBlock

    odd = ResidualAttentionBlock(64, 4, act_layer=nn.ReLU)
    assert not fusable(odd)
    holder = nn.Sequential(odd, block("gelu"))
    assert fuse_transformer_blocks(holder) == 1
    assert holder[0] is odd and isinstance(holder[1], FusedBlock)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_convolutions_equal_the_stock_tower(dtype):
    import torchvision

    torch.manual_seed(0)
    tower = torchvision.models.resnet18().eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity
        for m in tower.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
    fused = fuse_convolutions(tower).to(dtype)
    kinds = [type(m) for m in fused.modules()]
    assert nn.BatchNorm2d not in kinds and nn.ReLU not in kinds
    # Every ReLU became a post-op; the blocks' ends are add-then-ReLU post-ops; the three
    # downsampling convolutions have none.
    assert sum(isinstance(m, ConvAct) and m.add for m in fused.modules()) == 8
    assert sum(isinstance(m, ConvAct) and not m.relu for m in fused.modules()) == 3
    assert nn.Conv2d not in kinds
    x = torch.randn(2, 3, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = tower.to(dtype)(x).float()
        got = fused(x).float()
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got, want, atol=tolerance * want.abs().max(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
def test_a_convolution_keeps_onednns_weight_layout_and_gives_the_same_bits(dtype, relu):
    import copy

    if not fused_module._mkldnn(torch.ones(1, dtype=dtype)):
        pytest.skip("no oneDNN kernels for this dtype here")
    torch.manual_seed(0)
    conv = ConvAct(nn.Conv2d(16, 32, 3, padding=1), add=False, relu=relu).to(dtype)

    def unpacked(x):  # oneDNN from the plain weight, as before
        act = "relu" if relu else "none"
        args = (conv.padding, conv.stride, conv.dilation, conv.groups)
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, *args, act, [], ""
        )

    def image(batch, size):
        x = torch.randn(batch, 16, size, size).to(dtype)
        return x.contiguous(memory_format=torch.channels_last)

    with torch.inference_mode():
        x = image(4, 20)
        assert torch.equal(conv(x), unpacked(x))
        packed = conv._packed[2]
        for other in (image(1, 20), image(3, 9)):  # another batch or image size: same weight
            assert torch.equal(conv(other), unpacked(other))
        assert conv._packed[2] is packed
        conv.weight.mul_(-1)  # in place: the same tensor, a new version
        assert torch.equal(conv(x), unpacked(x)) and conv._packed[2] is not packed
        conv.weight = conv.weight * 2  # a new tensor, as a cast makes
        assert torch.equal(conv(x), unpacked(x))
        want = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)
        want = F.relu(want) if relu else want
        tolerance = 1e-4 if dtype == torch.float32 else 0.02
        torch.testing.assert_close(conv(x).float(), want, atol=tolerance * want.abs().max(), rtol=0)
    copied = copy.deepcopy(conv)  # the oneDNN tensor stays behind
    assert copied._packed is None
    with torch.inference_mode():
        assert torch.equal(copied(x), conv(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_attention_pool_equals_the_stock_pool_and_traces_as_one_call(dtype):
    """Only the mean token's query and output projection are computed: the same output as
    open_clip's pool, which projects every position and keeps the first; inside a tower,
    torch.fx traces it as one call and still folds the convolutions before it."""
    from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

    torch.manual_seed(0)
    pool = AttentionPool2d(spacial_dim=4, embed_dim=64, num_heads=4, output_dim=32).eval()
    with torch.no_grad():
        for p in pool.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.5)
    fused = FusedAttentionPool(pool).to(dtype)
    x = torch.randn(3, 64, 4, 4).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = pool.to(dtype)(x).float()
        got = fused(x).float()
    assert got.shape == want.shape == (3, 32)
    tolerance = 1e-5 if dtype == torch.float32 else 0.03
    torch.testing.assert_close(got, want, atol=tolerance * want.abs().max(), rtol=0)

    tower = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=4, image_size=64).eval()
    with torch.inference_mode():
        want = tower(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert fuse_attention_pools(tower) == 1 and isinstance(tower.attnpool, FusedAttentionPool)
    traced = fuse_convolutions(tower)
    assert "attention_pool(" in traced.code and any(
        isinstance(m, ConvAct) for m in traced.modules()
    )
    with torch.inference_mode():
        got = traced(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max(), rtol=0)


def small_clip_resnet():
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    tower = ModifiedResNet(layers=[1, 2, 1, 1], output_dim=32, heads=4, image_size=64).eval()
    with torch.no_grad():
        for m in tower.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
    fuse_attention_pools(tower)
    return tower


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 4, 5, 11])  # one part, exactly one, a partial last part
def test_a_clip_resnet_sub_batched_in_its_early_stages_gives_the_same_embeddings(dtype, batch):
    tower = small_clip_resnet()
    assert isinstance(fuse_convolutional_tower(tower), SubBatched)
    whole = fuse_convolutions(tower).to(dtype)
    # Parts of 4 images at 64² (by default 4 at 224², i.e. 49 at 64²).
    split = sub_batch_early_stages(fuse_convolutions(tower), pixels=4 * 64 * 64).to(dtype)
    assert split.images_per_part(torch.empty(1, 3, 64, 64)) == 4
    assert split.images_per_part(torch.empty(1, 3, 256, 256)) == 1
    # The cut: the stem and layer1-2 before it, layer3 on after it, nothing else across.
    early_targets = [n.target for n in split.early.graph.nodes if n.op == "call_module"]
    late_targets = [n.target for n in split.late.graph.nodes if n.op == "call_module"]
    assert early_targets[0] == "conv1" and early_targets[-1].startswith("layer2.1.")
    assert not any(t.startswith(("layer1", "layer2")) for t in late_targets)
    assert any(t.startswith("layer3") for t in late_targets)
    x = torch.randn(batch, 3, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = whole(x).float(), split(x).float()
    assert got.shape == (batch, 32)
    torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=0)


def test_towers_without_a_clean_cut_are_not_sub_batched():
    import torchvision

    resnet = torchvision.models.resnet18().eval()  # measured no faster sub-batched
    assert not isinstance(fuse_convolutional_tower(resnet), SubBatched)
    traced = fuse_convolutions(resnet)
    assert isinstance(sub_batch_early_stages(traced), SubBatched)
    assert sub_batch_early_stages(traced, stage="no_such_stage") is traced

    class Skips(nn.Module):  # the stem's output is used again after layer2
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

        def forward(self, x):
            stem = self.stem(x)
            return self.layer2(stem) + stem

    skips = fuse_convolutions(Skips().eval())
    assert sub_batch_early_stages(skips) is skips


@pytest.mark.parametrize("arch", ["tiny-rn", "tiny-vit-16", "bert_resnet"])
def test_the_fast_paths_keep_bf16_embeddings_at_bf16_tolerance(checkpoints, arch):
    """End to end through the encoder: fused bf16 against stock bf16 (both cast weights)."""
    from clipbench.demo import demo_rows

    spec = spec_for(checkpoints, arch)
    blobs = demo_rows(6, seed=2)[0]
    ids = list(range(len(blobs)))
    policy = resolve_precision("bf16", CPU)
    fused = load_encoder(spec, CPU)
    stock = load_encoder(spec, CPU)
    stock.fast_paths = False
    results = {}
    for name, enc in (("fused", fused), ("stock", stock)):
        results[name] = (
            l2_normalize(encode_images(enc, blobs, ids, 3, policy)),
            l2_normalize(encode_texts(enc, CAPTIONS, 3, policy)),
        )
    assert fused.fused and not stock.fused
    for got, want in zip(results["fused"], results["stock"], strict=True):
        np.testing.assert_allclose(got, want, atol=EMBEDDING_TOLERANCE["bf16"])
