"""Multiscale Vision Transformers for video: MViT v1 and v2.

* MViT: "Multiscale Vision Transformers" (Fan et al., ICCV 2021, arXiv 2104.11227).
* MViTv2: "MViTv2: Improved Multiscale Vision Transformers for Classification and Detection" (Li et al., CVPR 2022,
  arXiv 2112.01526).

A patch-embedding Conv3d turns the clip into a (T', H', W') token grid plus a class token. Every block runs
multi-head *pooling* attention: Q, K and V are pooled by depthwise Conv3d + LayerNorm (the class token is kept out of
the pooling and re-attached before the norm). Pooling Q with a spatial stride starts a new stage (the residual path is
max-pooled to match), channels and heads double at stage transitions, and the K/V stride adapts so that K/V keep the
same resolution as Q shrinks. v1 adds a separable space/time absolute position embedding; v2 replaces it with a
decomposed (t, h, w) relative position bias, adds the pooled Q back to the attention output (residual pooling) and
expands channels inside attention.

Every variant is one :class:`MViTCfg`; :func:`block_cfgs` turns it into the per-block structure (a list of
:class:`BlockCfg`), which the model builds from. Attention runs through the shared SDPA core
(:func:`videorec.models.layers.attention`); the v2 relative position bias goes in as its float ``attn_mask``.

Our parameter names are close to PySlowFast's. :func:`checkpoint_filter_fn` converts torchvision (``mvit_v1_b`` /
``mvit_v2_s``), pytorchvideo (``create_multiscale_vision_transformers``) and PySlowFast MViT / MViTv2 state dicts, and
resizes absolute position embeddings and relative position tables to the model's input size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import CheckpointError, FilterNotes, FormatNote, implied_settings
from .layers import (
    BackboneMixin,
    DropPath,
    Mlp,
    PatchEmbed3d,
    as_video,
    attention,
    checkpoint_seq,
    drop_path_rates,
    init_weights,
    to_3tuple,
)
from .registry import build_variant, register_model

__all__ = ["MViT", "MViTCfg", "BlockCfg", "block_cfgs", "MultiScaleAttention", "MultiScaleBlock"]

Size3 = tuple[int, int, int]


# --------------------------------------------------------------------------------------------------------------------
# Configuration: one MViTCfg per variant, expanded to per-block data
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MViTCfg:
    """The architecture of one MViT variant.

    Args:
        depth: number of blocks.
        embed_dim: channels after the patch embedding.
        num_heads: heads of the first block.
        stage_starts: blocks where a new stage starts: Q is pooled by ``q_stride`` and channels and heads double.
        q_stride: Q pooling stride at a stage start (t, h, w).
        kv_stride: K/V pooling stride of the first block; divided by ``q_stride`` at every stage start (adaptive).
        pool_kernel: depthwise pooling kernel for Q, K and V.
        pool_q_every_block: pool Q (stride 1) in every block, not only at stage starts (v2).
        expand_in_attn: the channel expansion happens in the attention of a stage's first block (v2) instead of in
            the MLP of the block before it (v1).
        rel_pos: decomposed relative position bias (v2).
        abs_pos: separable absolute space/time position embedding (v1).
        residual_pool: add the pooled Q to the attention output (v2).
        mlp_ratio: MLP hidden size over its input size.
        patch_kernel: patch-embedding kernel (t, h, w).
        patch_stride: patch-embedding stride.
        patch_padding: patch-embedding padding.
    """

    depth: int = 16
    embed_dim: int = 96
    num_heads: int = 1
    stage_starts: tuple[int, ...] = (1, 3, 14)
    q_stride: Size3 = (1, 2, 2)
    kv_stride: Size3 = (1, 8, 8)
    pool_kernel: Size3 = (3, 3, 3)
    pool_q_every_block: bool = False
    expand_in_attn: bool = False
    rel_pos: bool = False
    abs_pos: bool = True
    residual_pool: bool = False
    mlp_ratio: float = 4.0
    patch_kernel: Size3 = (3, 7, 7)
    patch_stride: Size3 = (2, 4, 4)
    patch_padding: Size3 = (1, 3, 3)

    def __post_init__(self) -> None:
        # sizes given as lists (a config file) or one int become tuples
        object.__setattr__(self, "stage_starts", tuple(self.stage_starts))
        for name in ("q_stride", "kv_stride", "pool_kernel", "patch_kernel", "patch_stride", "patch_padding"):
            object.__setattr__(self, name, to_3tuple(getattr(self, name)))


@dataclass(frozen=True)
class BlockCfg:
    """One block: its channels, heads and pooling. A pool exists when its kernel or stride is not all ones."""

    dim: int
    dim_out: int
    num_heads: int
    kernel_q: Size3
    stride_q: Size3
    kernel_kv: Size3
    stride_kv: Size3
    expand_in_attn: bool = False

    @property
    def attn_dim(self) -> int:
        """Channels of the attention output (and of the MLP input)."""
        return self.dim_out if self.expand_in_attn else self.dim


def block_cfgs(cfg: MViTCfg) -> list[BlockCfg]:
    """Expand a variant's :class:`MViTCfg` into one :class:`BlockCfg` per block."""
    starts = set(cfg.stage_starts)
    if any(not 0 < s < cfg.depth for s in starts):
        raise ValueError(f"MViT: stage_starts {cfg.stage_starts} must lie in [1, depth={cfg.depth})")

    def scale(i: int) -> int:  # channel / head multiplier in effect at block i
        return 2 ** sum(s <= i for s in starts)

    out: list[BlockCfg] = []
    kv_stride = tuple(cfg.kv_stride)
    ones = (1, 1, 1)
    for i in range(cfg.depth):
        heads = cfg.num_heads * scale(i)
        if cfg.expand_in_attn:  # v2: block i maps the previous width to its own
            dim, dim_out = cfg.embed_dim * scale(i - 1), cfg.embed_dim * scale(i)
        else:  # v1: the MLP of block i already produces the width of block i + 1
            dim, dim_out = cfg.embed_dim * scale(i), cfg.embed_dim * scale(i + 1)
        stride_q = tuple(cfg.q_stride) if i in starts else ones
        if i in starts:
            kv_stride = tuple(max(s // q, 1) for s, q in zip(kv_stride, cfg.q_stride, strict=True))
        kernel_q = tuple(cfg.pool_kernel) if (i in starts or cfg.pool_q_every_block) else ones
        out.append(
            BlockCfg(
                dim=dim,
                dim_out=dim_out,
                num_heads=heads,
                kernel_q=kernel_q,  # type: ignore[arg-type]
                stride_q=stride_q,  # type: ignore[arg-type]
                kernel_kv=tuple(cfg.pool_kernel),  # type: ignore[arg-type]
                stride_kv=kv_stride,  # type: ignore[arg-type]
                expand_in_attn=cfg.expand_in_attn,
            )
        )
    return out


def _conv_out(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> Size3:
    """Output grid of a Conv3d / pool with the given geometry."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding, strict=True))  # type: ignore[return-value]


def _pooled(thw: Size3, kernel: Size3, stride: Size3) -> Size3:
    if math.prod(kernel) == 1 and math.prod(stride) == 1:
        return thw
    return _conv_out(thw, kernel, stride, [k // 2 for k in kernel])


# --------------------------------------------------------------------------------------------------------------------
# Helpers: pooling token sequences, position tables
# --------------------------------------------------------------------------------------------------------------------


def _split_cls(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split off the class token along ``dim``. ``split`` (not slicing) keeps the backward pass to one ``cat``."""
    cls_tok, rest = x.split([1, x.shape[dim] - 1], dim=dim)
    return cls_tok, rest


def _pool_heads(
    x: torch.Tensor, pool: nn.Conv3d, norm: nn.Module, thw: Size3, num_heads: int
) -> tuple[torch.Tensor, Size3]:
    """Pool Q, K or V: the space-time tokens of (B, 1 + THW, h * d) go through a depthwise conv shared by the heads;
    the class token skips the pool; then every head is normalised over its d channels.

    The tokens are pooled as one (B, h * d, T, H, W) channels-last tensor (the conv kernel repeated per head), which
    needs no transposition of heads into the batch and keeps the backward pass free of extra copies.

    Returns:
        (B, 1 + T'H'W', h * d) and the pooled grid (T', H', W').
    """
    C = x.shape[-1]
    cls_tok, grid = _split_cls(x, 1)
    # (B, THW, C) -> (B, C, T, H, W), a channels-last view
    grid = grid.unflatten(1, thw).permute(0, 4, 1, 2, 3)
    weight = pool.weight.repeat(num_heads, 1, 1, 1, 1)  # (d, 1, k, k, k) -> (h * d, 1, k, k, k)
    grid = F.conv3d(grid, weight, None, pool.stride, pool.padding, groups=C)
    new_thw = tuple(grid.shape[2:])
    grid = grid.flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, T'H'W', C)
    x = torch.cat((cls_tok, grid), dim=1)
    x = norm(x.unflatten(-1, (num_heads, C // num_heads))).flatten(2)  # LayerNorm per head
    return x, new_thw  # type: ignore[return-value]


def _pool_tokens(x: torch.Tensor, pool: nn.Module, thw: Size3) -> torch.Tensor:
    """Pool the space-time tokens of a (B, 1 + THW, C) sequence, keeping the class token: the residual path."""
    B, _, C = x.shape
    T, H, W = thw
    cls_tok, grid = _split_cls(x, 1)
    # (B, THW, C) -> (B, C, T, H, W)
    grid = grid.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)
    grid = pool(grid).flatten(2).transpose(1, 2)  # (B, T'H'W', C)
    return torch.cat((cls_tok, grid), dim=1)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a relative position table (L, d) to (length, d)."""
    if table.shape[0] == length:
        return table
    # (L, d) -> (1, d, L) -> (1, d, length) -> (length, d)
    out = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return out.squeeze(0).t()


def resize_pos_embed_spatial(pos: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a spatial position embedding (1, H*W, C) from ``old_hw`` to ``new_hw``."""
    if tuple(old_hw) == tuple(new_hw):
        return pos
    C = pos.shape[-1]
    # (1, HW, C) -> (1, C, H, W)
    grid = pos.reshape(1, old_hw[0], old_hw[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_hw, mode="bicubic", align_corners=False).to(pos.dtype)
    return grid.flatten(2).transpose(1, 2)  # (1, H'W', C)


def resize_pos_embed_temporal(pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a temporal position embedding (1, T, C) to (1, length, C)."""
    if pos.shape[1] == length:
        return pos
    # (1, T, C) -> (1, C, T)
    out = F.interpolate(pos.transpose(1, 2).float(), size=length, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(pos.dtype)


def _rel_pos_index(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Index (q_len, k_len) into a table of 2 * max(q_len, k_len) - 1 relative offsets, scaled when sizes differ."""
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=device)[:, None] * q_ratio
    k_pos = (torch.arange(k_len, device=device)[None, :] + (1.0 - k_len)) * k_ratio
    return (q_pos - k_pos).long()


def rel_pos_bias(
    q_sp: torch.Tensor,
    q_thw: Size3,
    k_thw: Size3,
    rel_pos_t: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> torch.Tensor:
    """Decomposed relative position bias of MViTv2 as an additive attention mask.

    Args:
        q_sp: (B, h, Nq, d) pooled queries without the class token.
        q_thw: query grid (t, h, w).
        k_thw: key grid.
        rel_pos_t: (Lt, d) temporal table; resampled when its length does not fit.
        rel_pos_h: (Lh, d) vertical table.
        rel_pos_w: (Lw, d) horizontal table.

    Returns:
        (B, h, 1 + Nq, 1 + Nk) bias, zero on the class-token row and column.
    """
    qt, qh, qw = q_thw
    kt, kh, kw = k_thw
    dev = q_sp.device
    Rt = resize_rel_pos(rel_pos_t, 2 * max(qt, kt) - 1)[_rel_pos_index(qt, kt, dev)]  # (qt, kt, d)
    Rh = resize_rel_pos(rel_pos_h, 2 * max(qh, kh) - 1)[_rel_pos_index(qh, kh, dev)]  # (qh, kh, d)
    Rw = resize_rel_pos(rel_pos_w, 2 * max(qw, kw) - 1)[_rel_pos_index(qw, kw, dev)]  # (qw, kw, d)
    B, nh, _, d = q_sp.shape
    r_q = q_sp.reshape(B, nh, qt, qh, qw, d)
    bias_t = torch.einsum("bntyxd,tkd->bntyxk", r_q, Rt)  # (B, h, qt, qh, qw, kt)
    bias_h = torch.einsum("bntyxd,ykd->bntyxk", r_q, Rh)  # (B, h, qt, qh, qw, kh)
    bias_w = torch.einsum("bntyxd,xkd->bntyxk", r_q, Rw)  # (B, h, qt, qh, qw, kw)
    # broadcast to (B, h, qt, qh, qw, kt, kh, kw) -> (B, h, Nq, Nk)
    bias = bias_t[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :]
    bias = bias.reshape(B, nh, qt * qh * qw, kt * kh * kw)
    return F.pad(bias, (1, 0, 1, 0))  # zero row / column for the class token


# --------------------------------------------------------------------------------------------------------------------
# Attention, block
# --------------------------------------------------------------------------------------------------------------------


class MultiScaleAttention(nn.Module):
    """Multi-head pooling attention on (B, 1 + THW, C) tokens, class token first.

    Args:
        dim: input channels.
        dim_out: channels of Q, K, V and of the output.
        num_heads: attention heads.
        input_size: nominal token grid (t, h, w) of the block's input, which sizes the relative position tables.
        kernel_q: Q pooling kernel; with ``stride_q`` all ones there is no Q pool.
        stride_q: Q pooling stride.
        kernel_kv: K/V pooling kernel.
        stride_kv: K/V pooling stride.
        qkv_bias: bias on the qkv projection.
        rel_pos: decomposed relative position bias (v2).
        residual_pool: add the pooled Q to the attention output, class token excluded (v2).
        attn_drop: attention dropout.
        proj_drop: dropout after the output projection.
        norm_eps: epsilon of the LayerNorms after pooling.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_size: Size3,
        kernel_q: Size3 = (1, 1, 1),
        stride_q: Size3 = (1, 1, 1),
        kernel_kv: Size3 = (1, 1, 1),
        stride_kv: Size3 = (1, 1, 1),
        qkv_bias: bool = True,
        rel_pos: bool = False,
        residual_pool: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"MViT: attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.dim_out = dim_out
        self.residual_pool = residual_pool
        self.attn_drop = attn_drop
        self.fused_attn: bool | None = None  # None follows VIDEOREC_FUSED_ATTN
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)

        d = self.head_dim
        self.pool_q, self.norm_q = self._make_pool(d, kernel_q, stride_q, norm_eps)
        self.pool_k, self.norm_k = self._make_pool(d, kernel_kv, stride_kv, norm_eps)
        self.pool_v, self.norm_v = self._make_pool(d, kernel_kv, stride_kv, norm_eps)

        self.rel_pos = rel_pos
        if rel_pos:
            # tables cover the offsets between the Q and K grids of the built input size, sized as in torchvision
            # and PySlowFast (floor division by the strides) so that their state dicts have the same shapes
            size = max(input_size[1:])
            spatial = max(2 * max(size // stride_q[1], size // stride_kv[1]) - 1, 1)
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial, d))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial, d))
            self.rel_pos_t = nn.Parameter(torch.zeros(max(2 * input_size[0] - 1, 1), d))
            for p in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _make_pool(d: int, kernel: Size3, stride: Size3, eps: float) -> tuple[nn.Module | None, nn.Module | None]:
        if math.prod(kernel) == 1 and math.prod(stride) == 1:
            return None, None
        conv = nn.Conv3d(d, d, kernel, stride=stride, padding=[k // 2 for k in kernel], groups=d, bias=False)
        return conv, nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, thw: Size3) -> tuple[torch.Tensor, Size3]:
        """(B, 1 + THW, C) -> (B, 1 + T'H'W', dim_out) and the pooled grid."""
        B = x.shape[0]
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).split(self.dim_out, dim=-1)  # 3 x (B, N, h * d) views
        k_thw = thw
        if self.pool_k is not None:
            k, k_thw = _pool_heads(k, self.pool_k, self.norm_k, thw, h)
            v, _ = _pool_heads(v, self.pool_v, self.norm_v, thw, h)
        q_thw = thw
        if self.pool_q is not None:
            q, q_thw = _pool_heads(q, self.pool_q, self.norm_q, thw, h)
        # (B, N, h * d) -> (B, h, N, d)
        q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in (q, k, v))

        bias = q_sp = None
        if self.rel_pos or self.residual_pool:
            q_sp = _split_cls(q, 2)[1]  # (B, h, Nq - 1, d)
        if self.rel_pos:
            bias = rel_pos_bias(q_sp, q_thw, k_thw, self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)
        drop = self.attn_drop if self.training else 0.0
        out = attention(q, k, v, attn_mask=bias, dropout_p=drop, fused=self.fused_attn)  # (B, h, Nq, d)
        if q_sp is not None and self.residual_pool:  # pooled Q joins the output, class token excluded
            out = out + F.pad(q_sp, (0, 0, 1, 0))
        out = out.transpose(1, 2).reshape(B, -1, self.dim_out)  # (B, h, Nq, d) -> (B, Nq, h * d)
        return self.proj_drop(self.proj(out)), q_thw


class MultiScaleBlock(nn.Module):
    """Pooling attention + MLP with pre-norms; the residual path is max-pooled and projected when shapes change.

    Args:
        cfg: the block's structure.
        input_size: token grid this block is built for.
        mlp_ratio: MLP hidden size over its input size.
        qkv_bias: bias on the qkv projection.
        rel_pos: decomposed relative position bias (v2).
        residual_pool: residual pooling inside attention (v2).
        drop: dropout after projections and in the MLP.
        attn_drop: attention dropout.
        drop_path: stochastic depth of both residual branches.
        norm_eps: epsilon of the block's LayerNorms.
        pool_norm_eps: epsilon of the LayerNorms after Q/K/V pooling.
    """

    def __init__(
        self,
        cfg: BlockCfg,
        input_size: Size3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        rel_pos: bool = False,
        residual_pool: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        pool_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.expand_in_attn = cfg.expand_in_attn
        attn_dim = cfg.attn_dim
        self.norm1 = nn.LayerNorm(cfg.dim, eps=norm_eps)
        self.attn = MultiScaleAttention(
            dim=cfg.dim,
            dim_out=attn_dim,
            num_heads=cfg.num_heads,
            input_size=input_size,
            kernel_q=cfg.kernel_q,
            stride_q=cfg.stride_q,
            kernel_kv=cfg.kernel_kv,
            stride_kv=cfg.stride_kv,
            qkv_bias=qkv_bias,
            rel_pos=rel_pos,
            residual_pool=residual_pool,
            attn_drop=attn_drop,
            proj_drop=drop,
            norm_eps=pool_norm_eps,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(attn_dim, eps=norm_eps)
        self.mlp = Mlp(attn_dim, int(attn_dim * mlp_ratio), cfg.dim_out, drop=drop)
        self.proj = nn.Linear(cfg.dim, cfg.dim_out) if cfg.dim != cfg.dim_out else None
        self.pool_skip: nn.Module | None = None
        if math.prod(cfg.stride_q) > 1:
            kernel = [s + 1 if s > 1 else s for s in cfg.stride_q]
            self.pool_skip = nn.MaxPool3d(kernel, stride=cfg.stride_q, padding=[k // 2 for k in kernel])

    def forward(self, x: torch.Tensor, thw: Size3) -> tuple[torch.Tensor, Size3]:
        """(B, 1 + THW, dim) -> (B, 1 + T'H'W', dim_out) and the new grid."""
        x_norm = self.norm1(x)
        x_attn, new_thw = self.attn(x_norm, thw)
        if self.expand_in_attn and self.proj is not None:
            x = self.proj(x_norm)
        if self.pool_skip is not None:
            x = _pool_tokens(x, self.pool_skip, thw)
        x = x + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if not self.expand_in_attn and self.proj is not None:
            x = self.proj(x_norm)
        return x + self.drop_path(x_mlp), new_thw


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# --------------------------------------------------------------------------------------------------------------------

# torchvision ``torchvision.models.video.mvit`` names -> ours
_TORCHVISION_RULES = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "cls_token"),
    (r"^pos_encoding\.spatial_pos$", "pos_embed_spatial"),
    (r"^pos_encoding\.temporal_pos$", "pos_embed_temporal"),
    (r"^pos_encoding\.class_pos$", "pos_embed_class"),
    (r"\.attn\.project\.0\.", ".attn.proj."),
    (r"\.attn\.pool_([qkv])\.pool\.", r".attn.pool_\1."),
    (r"\.attn\.pool_([qkv])\.norm_act\.0\.", r".attn.norm_\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^(blocks\.\d+)\.project\.", r"\1.proj."),
    (r"^head\.1\.", "head."),
]
# pytorchvideo ``create_multiscale_vision_transformers`` names -> ours
_PYTORCHVIDEO_RULES = [
    (r"^patch_embed\.patch_model\.", "patch_embed.proj."),
    (r"^cls_positional_encoding\.", ""),
    (r"^norm_embed\.", "norm."),
    (r"^head\.proj\.", "head."),
]
# PySlowFast ``slowfast/models/video_model_builder.py`` MViT names -> ours
_SLOWFAST_RULES = [(r"^head\.projection\.", "head.")]


def _rename(state_dict: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _fuse_qkv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate separate ``attn.q`` / ``attn.k`` / ``attn.v`` linears into our fused ``attn.qkv``."""
    out = dict(state_dict)
    for key in [k for k in state_dict if re.search(r"\.attn\.q\.(weight|bias)$", k)]:
        prefix, kind = key.rsplit(".q.", 1)
        parts = [out.pop(f"{prefix}.{n}.{kind}") for n in "qkv"]
        out[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def _detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    if "conv_proj.weight" in keys or any(k.startswith("pos_encoding.") for k in keys):
        return "torchvision-mvit"
    if "patch_embed.patch_model.weight" in keys or any(k.startswith("cls_positional_encoding.") for k in keys):
        return "pytorchvideo-mvit"
    if any(re.search(r"\.attn\.q\.weight$", k) for k in keys):
        return "slowfast-mvit-2021"  # separate q / k / v linears: the PySlowFast code of the MViT (v1) release
    if "head.projection.weight" in keys:
        return "slowfast-mvit"
    return "mvit"


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: MViT
) -> tuple[dict[str, torch.Tensor], str, FilterNotes]:
    """Convert a torchvision / pytorchvideo / PySlowFast MViT state dict to our names and the model's input size.

    The format is detected from the keys (see :data:`FORMAT_NOTES`). Absolute position embeddings (separable space /
    time) are resampled to the model's patch grid (bicubic in space, linear in time) and relative position tables
    linearly to the model's table lengths, so a checkpoint trained at another ``num_frames`` / ``img_size`` loads; the
    resampled tensors are listed in the returned :class:`~videorec.models.checkpoints.FilterNotes`.
    """
    fmt = _detect_format(state_dict)
    if fmt == "torchvision-mvit":
        sd = _rename(state_dict, _TORCHVISION_RULES)
        for key in ("cls_token", "pos_embed_class"):  # (C,) -> (1, 1, C)
            if key in sd:
                sd[key] = sd[key].reshape(1, 1, -1)
        for key in ("pos_embed_spatial", "pos_embed_temporal"):  # (N, C) -> (1, N, C)
            if key in sd:
                sd[key] = sd[key].unsqueeze(0)
    elif fmt == "pytorchvideo-mvit":
        if "cls_positional_encoding.pos_embed" in state_dict:
            raise CheckpointError(
                "pytorchvideo MViT with a joint (non-separable) position embedding "
                "(cls_positional_encoding.pos_embed) is not supported; MViT here uses sep_pos_embed=True"
            )
        sd = _fuse_qkv(_rename(state_dict, _PYTORCHVIDEO_RULES))
    elif fmt.startswith("slowfast-mvit"):
        if "pos_embed" in state_dict:
            raise CheckpointError("PySlowFast MViT with a joint position embedding (pos_embed) is not supported")
        sd = _fuse_qkv(_rename(state_dict, _SLOWFAST_RULES))
    else:
        sd = dict(state_dict)
    notes = FilterNotes()
    return _resize_positions(sd, model, notes), fmt, notes


def _resize_positions(sd: dict[str, torch.Tensor], model: MViT, notes: FilterNotes) -> dict[str, torch.Tensor]:
    """Resample position embeddings and relative tables of ``sd`` that do not match ``model``'s sizes (recorded in
    ``notes``)."""
    target = model.state_dict()
    if "pos_embed_spatial" in sd and "pos_embed_spatial" in target:
        src, dst = sd["pos_embed_spatial"], target["pos_embed_spatial"]
        if src.shape != dst.shape and src.ndim == 3:
            old = math.isqrt(src.shape[1])
            if old * old != src.shape[1]:
                raise CheckpointError(f"pos_embed_spatial {tuple(src.shape)}: the checkpoint's grid is not square")
            new = resize_pos_embed_spatial(src, (old, old), model.patch_grid[1:])
            sd["pos_embed_spatial"] = notes.resize("pos_embed_spatial", src, new)
    if "pos_embed_temporal" in sd and "pos_embed_temporal" in target:
        src = sd["pos_embed_temporal"]
        if src.ndim == 3:
            new = resize_pos_embed_temporal(src, target["pos_embed_temporal"].shape[1])
            sd["pos_embed_temporal"] = notes.resize("pos_embed_temporal", src, new)
    for key, value in sd.items():
        if ".rel_pos_" in key and key in target and value.ndim == 2 and value.shape[1] == target[key].shape[1]:
            sd[key] = notes.resize(key, value, resize_rel_pos(value, target[key].shape[0]))
    return sd


_TV = "torchvision/models/video/mvit.py"
_PTV = "pytorchvideo/layers/attention.py, models/vision_transformers.py, models/head.py (0.1.5)"
_SF = "facebookresearch/SlowFast slowfast/models/{attention,video_model_builder,head_helper,common}.py"
_SF21 = "the same files at commit e289403 (June 2021, before the MViTv2 release 1aebd71)"
FORMAT_NOTES: list[FormatNote] = [
    # torchvision: keys conv_proj., pos_encoding., attn.pool_q.norm_act.0.
    FormatNote("torchvision-mvit", "LayerNorm eps (blocks, final, after pooling)", "1e-6", _TV),
    FormatNote("torchvision-mvit", "qkv bias", "True", _TV),
    FormatNote("torchvision-mvit", "head", "class token after the norm, Dropout(0.5), Linear; no activation", _TV),
    FormatNote("torchvision-mvit", "GELU / attention scale", "exact / head_dim ** -0.5", _TV),
    FormatNote("torchvision-mvit", "v2: residual pooling, relative positions", "True, True (mvit_v2_s)", _TV),
    # pytorchvideo: keys patch_embed.patch_model., cls_positional_encoding.
    FormatNote("pytorchvideo-mvit", "LayerNorm eps (blocks, final)", "1e-6", _PTV),
    FormatNote(
        "pytorchvideo-mvit", "LayerNorm eps after Q/K/V pooling",
        "1e-5 (MultiScaleBlock builds MultiScaleAttention(norm_layer=nn.LayerNorm))", _PTV, (("pool_norm_eps", 1e-5),),
    ),
    FormatNote("pytorchvideo-mvit", "qkv bias", "True", _PTV),
    FormatNote("pytorchvideo-mvit", "head", "class token after the norm, Dropout(0.5), Linear; activation None", _PTV),
    FormatNote("pytorchvideo-mvit", "GELU / attention scale", "exact / head_dim ** -0.5", _PTV),
    # PySlowFast since the MViTv2 release: keys head.projection., fused attn.qkv.
    FormatNote("slowfast-mvit", "LayerNorm eps (blocks, final, after pooling)", "1e-6 (MVIT.NORM layernorm)", _SF),
    FormatNote("slowfast-mvit", "qkv bias", "True (MVIT.QKV_BIAS)", _SF),
    FormatNote(
        "slowfast-mvit", "head",
        "class token after the norm, Dropout(0.5), Linear, softmax at eval (MODEL.HEAD_ACT); ours returns the "
        "logits before that softmax", _SF,
    ),
    FormatNote("slowfast-mvit", "GELU / attention scale", "exact / head_dim ** -0.5", _SF),
    FormatNote("slowfast-mvit", "relative-position table resampling", "linear (get_rel_pos)", _SF),
    FormatNote(
        "slowfast-mvit", "mean pooling (MVIT.USE_MEAN_POOLING)",
        "False in the published configs; when True: mean, then norm (our global_pool='avg' is norm, then mean)", _SF,
    ),
    # PySlowFast of the MViT (v1) release, which wrote the published MViT-B .pyth files: separate attn.q/k/v.
    FormatNote(
        "slowfast-mvit-2021", "LayerNorm eps after Q/K/V pooling",
        "1e-5 (MultiScaleBlock builds MultiScaleAttention(norm_layer=nn.LayerNorm)); the current code passes "
        "its own 1e-6 norm_layer and writes fused qkv unless MVIT.SEPARATE_QKV (no published config sets it)",
        _SF21, (("pool_norm_eps", 1e-5),),
    ),
    FormatNote("slowfast-mvit-2021", "LayerNorm eps (blocks, final)", "1e-6", _SF21),
    FormatNote("slowfast-mvit-2021", "q, k, v", "separate linears, fused into our qkv on load", _SF21),
    FormatNote("slowfast-mvit-2021", "head, GELU, attention scale", "as slowfast-mvit", _SF21),
    # ours
    FormatNote(
        "mvit", "every setting", "what the run used: a Lightning checkpoint's hyper_parameters.backbone_kwargs "
        "(pool_norm_eps re-applied); a plain state dict carries none", "videorec.lit.VideoClassifier",
    ),
]  # fmt: skip
"""Every MViT format's settings that change outputs without changing key names or shapes, with the source file."""

FORMAT_SETTINGS: dict[str, dict[str, object]] = implied_settings(FORMAT_NOTES)
"""The settings of :data:`FORMAT_NOTES` that differ from our defaults, applied when the format is detected."""


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class MViT(BackboneMixin, nn.Module):
    """MViT v1 / v2 video classifier (class-token head).

    Args:
        cfg: the architecture (see :class:`MViTCfg`); None is its defaults, MViT-B.
        num_classes: classifier size (0 for a feature extractor).
        num_frames: frames per clip the position tables are built for.
        img_size: square input resolution the position tables are built for.
        in_chans: input channels.
        qkv_bias: bias on the qkv projections.
        drop_rate: dropout after projections and in MLPs.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, growing linearly over the blocks.
        head_drop: dropout before the classifier.
        norm_eps: epsilon of the block and final LayerNorms.
        pool_norm_eps: epsilon of the LayerNorms after Q/K/V pooling (1e-6 as torchvision and PySlowFast v2;
            pytorchvideo and the original v1 code used 1e-5).
        global_pool: ``"token"`` classifies the class token (the published models); ``"avg"`` the mean of the
            normalised space-time tokens (PySlowFast's mean pooling).
    """

    default_inflate = "center"  # a 2D patch kernel sees the centre frame only
    checkpoint_filter = staticmethod(checkpoint_filter_fn)
    format_settings = FORMAT_SETTINGS

    def apply_format_setting(self, name: str, value: float) -> None:
        """Apply a setting of ``format_settings`` to the built model."""
        if name != "pool_norm_eps":
            raise ValueError(f"MViT: no format setting {name!r} (known: pool_norm_eps)")
        for module in self.modules():
            if isinstance(module, MultiScaleAttention):
                for norm in (module.norm_q, module.norm_k, module.norm_v):
                    if norm is not None:
                        norm.eps = value

    def __init__(
        self,
        cfg: MViTCfg | None = None,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.5,
        norm_eps: float = 1e-6,
        pool_norm_eps: float = 1e-6,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"MViT: global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.global_pool = global_pool
        self.cfg = c = MViTCfg() if cfg is None else cfg
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if num_frames < 1 or min(img_hw) < 1:
            raise ValueError(f"MViT: num_frames and img_size must be positive, got {num_frames} and {img_size}")
        self.num_frames = num_frames
        self.img_size = img_hw
        self.blocks_cfg = block_cfgs(c)

        self.patch_embed = PatchEmbed3d(
            in_chans, c.embed_dim, c.patch_kernel, stride=c.patch_stride, padding=c.patch_padding, norm=False
        )
        self.patch_grid = _conv_out((num_frames, *img_hw), c.patch_kernel, c.patch_stride, c.patch_padding)
        if min(self.patch_grid) < 1:
            raise ValueError(
                f"MViT: input {num_frames}x{img_hw[0]}x{img_hw[1]} is smaller than the patch kernel {c.patch_kernel}"
            )
        T, H, W = self.patch_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        if c.abs_pos:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, H * W, c.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, T, c.embed_dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = drop_path_rates(drop_path_rate, c.depth)
        self.blocks = nn.ModuleList()
        grid = nominal = self.patch_grid  # the real token grid; the nominal one (floor division) sizes the tables
        for i, bc in enumerate(self.blocks_cfg):
            self.blocks.append(
                MultiScaleBlock(
                    bc,
                    input_size=nominal,
                    mlp_ratio=c.mlp_ratio,
                    qkv_bias=qkv_bias,
                    rel_pos=c.rel_pos,
                    residual_pool=c.residual_pool,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_eps=norm_eps,
                    pool_norm_eps=pool_norm_eps,
                )
            )
            grid = _pooled(grid, bc.kernel_q, bc.stride_q)
            nominal = tuple(n // st for n, st in zip(nominal, bc.stride_q, strict=True))  # type: ignore[assignment]
        self.feature_grid = grid
        self.num_features = self.blocks_cfg[-1].dim_out
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.init_head(num_classes, head_drop)

        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if c.abs_pos:
            for p in (self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.LayerNorm):
            init_weights(m)

    # --- timm-style uniform API ---
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay: class token, position embeddings and relative tables."""
        keys = ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class", "rel_pos_")
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1].startswith(keys)}

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Regexes grouping parameters for layer-wise learning-rate decay (stem, then one group per block)."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed", "blocks": r"^blocks\.(\d+)"}

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if num_classes > 0:
            init_weights(self.head)

    def _pos_embed(self, x: torch.Tensor, thw: Size3) -> torch.Tensor:
        """Prepend the class token and add the separable position embedding: (B, THW, C) -> (B, 1 + THW, C)."""
        B, _, C = x.shape
        cls_tok = self.cls_token.expand(B, -1, -1)
        if not self.cfg.abs_pos:
            return torch.cat((cls_tok, x), dim=1)
        T, H, W = thw
        spatial = resize_pos_embed_spatial(self.pos_embed_spatial, self.patch_grid[1:], (H, W))  # (1, HW, C)
        temporal = resize_pos_embed_temporal(self.pos_embed_temporal, T)  # (1, T, C)
        # (1, 1, HW, C) + (1, T, 1, C) -> (1, THW, C)
        pos = (spatial.unsqueeze(1) + temporal.unsqueeze(2)).reshape(1, T * H * W, C)
        return torch.cat((cls_tok + self.pos_embed_class, x + pos), dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) -> normalised tokens (B, 1 + T'H'W', C'), class token first."""
        x = as_video(x)
        x = self.patch_embed(x)  # (B, C, T', H', W')
        thw: Size3 = tuple(x.shape[2:])  # type: ignore[assignment]
        x = x.flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, T'H'W', C)
        x = self.pos_drop(self._pos_embed(x, thw))
        x, thw = checkpoint_seq(self.blocks, x, thw, enabled=self.grad_checkpointing and self.training, carry=True)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + N, C) tokens from :meth:`forward_features` -> (B, num_classes), or (B, C) with ``pre_logits``."""
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(1)  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


# --------------------------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------------------------

_V2 = dict(pool_q_every_block=True, expand_in_attn=True, rel_pos=True, abs_pos=False, residual_pool=True)


@dataclass
class _Variant:
    cfg: MViTCfg
    defaults: dict = field(default_factory=dict)  # non-architecture defaults: input size, regularisation


model_cfgs: dict[str, _Variant] = {
    "mvit_b": _Variant(MViTCfg(), dict(num_frames=16, img_size=224, drop_path_rate=0.2)),
    "mvit_b_32x3": _Variant(MViTCfg(), dict(num_frames=32, img_size=224, drop_path_rate=0.3)),
    "mvitv2_s": _Variant(MViTCfg(**_V2), dict(num_frames=16, img_size=224, drop_path_rate=0.2)),
    "mvitv2_b": _Variant(
        MViTCfg(depth=24, stage_starts=(2, 5, 21), **_V2), dict(num_frames=32, img_size=224, drop_path_rate=0.3)
    ),
    "mvit_tiny": _Variant(
        MViTCfg(depth=4, embed_dim=32, stage_starts=(1, 3), kv_stride=(1, 4, 4), mlp_ratio=2.0, **_V2),
        dict(num_frames=8, img_size=64, num_classes=8, drop_path_rate=0.0, head_drop=0.0, global_pool="avg"),
    ),
}


def _create(variant: str, overrides: dict) -> MViT:
    v = model_cfgs[variant]
    return build_variant(MViT, variant, v.defaults, overrides, cfg=v.cfg)


@register_model
def mvit_b(**kwargs) -> MViT:
    """MViT-B 16x4 (v1): 36.6M params, 70.5 GFLOPs at 16x224x224."""
    return _create("mvit_b", kwargs)


@register_model
def mvit_b_32x3(**kwargs) -> MViT:
    """MViT-B 32x3 (v1): the 16-block MViT-B on 32 frames, 36.6M params, 170 GFLOPs at 32x224x224."""
    return _create("mvit_b_32x3", kwargs)


@register_model
def mvitv2_s(**kwargs) -> MViT:
    """MViTv2-S 16x4: 34.5M params, 64 GFLOPs at 16x224x224."""
    return _create("mvitv2_s", kwargs)


@register_model
def mvitv2_b(**kwargs) -> MViT:
    """MViTv2-B 32x3: 24 blocks, 51.2M params, 225 GFLOPs at 32x224x224."""
    return _create("mvitv2_b", kwargs)


@register_model
def mvit_tiny(**kwargs) -> MViT:
    """A 4-block MViTv2 (dims 32 -> 64 -> 128) for tests and the CPU demo: 8x64x64 input."""
    return _create("mvit_tiny", kwargs)
