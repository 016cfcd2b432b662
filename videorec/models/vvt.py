"""Vicinity Vision Transformer for video: "Vicinity Vision Transformer" (Sun et al., TPAMI 2023, arXiv 2206.10552).

Written for videorec from the paper and from reading the official code (github.com/OpenNLPLab/Vicinity-Vision-
Transformer, ``classification/models/vvt/vvt.py``) for facts: the stage plan, the sum decomposition of the decay,
feature reduction by 2 and the feature preserving connection.

A PVTv2-style pyramid of four stages. Each stage starts with an overlapping patch embedding (a convolution of kernel
7 / stride 4, then 3 / 2, followed by LayerNorm) and stacks blocks of LayerNorm -> vicinity attention -> residual,
LayerNorm -> MLP with a depthwise convolution between its two linear layers -> residual.

Vicinity attention is linear attention with a locality prior. Queries and keys go through a ReLU feature map; every
token gets an angle per axis, ``theta = pi/2 * i / n`` for its index ``i`` of ``n`` along that axis, so that
``cos(theta_i - theta_j)`` decays with the distance ``|i - j|`` along the axis. Because
``cos(a - b) = cos a cos b + sin a sin b``, the decay splits into a query part and a key part, and
``phi(Q) (phi(K)^T V)`` with the normaliser ``1 / (phi(Q) . sum_j phi(K_j))`` costs O(N d^2): no N x N matrix is
ever built. Two decompositions are implemented (``decomposition=``):

* ``"sum"`` (default, the official code's ``use_sum=True``): the decay is ``sum_a cos(theta_a,i - theta_a,j)`` over
  the axes ``a``, a Manhattan-like vicinity; the features are the concatenation of ``q cos theta_a`` and
  ``q sin theta_a`` for every axis, i.e. 2 groups per axis (6 in 3D, 4 in 2D).
* ``"product"``: the decay is ``prod_a cos(theta_a,i - theta_a,j)``; expanding the product gives the ``2^A``
  groups ``q prod_a (cos|sin) theta_a`` (8 in 3D, 4 in 2D).

In 3D the axes are (t, h, w). An axis of length 1 carries no position and is left out (for ``"product"`` this is
exact, since its sine groups are zero; for ``"sum"`` it drops a constant term), so a one-frame video gives exactly
the 2D decomposition: with T=1 the model is the image model.

Feature reduction attention projects Q, K and V to half the channels; the output projection restores them and the
feature preserving connection gates the result with a squeeze-excitation of the attention input
(``y + y * sigmoid(fc2(relu(fc1(mean_tokens(x)))))``).

Video choices (ours; the paper is 2D): the stage-1 embedding is a (3, 7, 7) convolution with temporal stride 2 (16
frames -> 8 token frames, as in UniFormer / MViT); stages 2-4 embed with (1, 3, 3) kernels; the MLP's depthwise
convolution is 3x3x3. Building with ``num_frames=1`` gives the image model (all temporal kernels 1); its weights load
into a video model through the generic loader's ``"center"`` inflation, which keeps the image response on one frame.
The official code clamps intermediate magnitudes to [1e-4, 1e4]; we only keep the 1e-4 in the normaliser and run the
linear-attention products in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .checkpoints import own_keys_filter
from .layers import (
    BackboneMixin,
    DropPath,
    PatchEmbed3d,
    as_video,
    check_global_pool,
    checkpoint_seq,
    drop_path_rates,
    init_weights,
)
from .registry import build_variant, register_model

__all__ = ["VicinityVisionTransformer", "VicinityAttention", "FeaturePreserving", "DWConvMlp", "Block"]

DECOMPOSITIONS = ("sum", "product")


def vicinity_features(x: torch.Tensor, grid: Sequence[int], decomposition: str = "sum") -> torch.Tensor:
    """Multiply token features by the cos/sin position terms of the vicinity decay and stack the groups.

    Args:
        x: (B, h, N, d) non-negative features, tokens in (t, h, w) raster order with N = prod(grid).
        grid: the token grid (T, H, W).
        decomposition: ``"sum"`` (2 groups per axis) or ``"product"`` (2^A groups).

    Returns:
        (B, h, N, G * d) with G the number of groups; G = 1 (``x`` itself) when every axis has length 1.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"vicinity decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
    if math.prod(grid) != x.shape[-2]:
        raise ValueError(f"token grid {tuple(grid)} does not match {x.shape[-2]} tokens")
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []  # (cos, sin) per axis, each (N, 1)
    for axis, n in enumerate(grid):
        if n == 1:
            continue  # no position along this axis
        shape = [1, 1, 1]
        shape[axis] = n
        theta = (math.pi / 2) * torch.arange(n, device=x.device, dtype=torch.float32) / n
        theta = theta.view(shape).expand(*grid).reshape(-1, 1).to(x.dtype)  # (T, H, W) -> (N, 1)
        terms.append((theta.cos(), theta.sin()))
    if not terms:
        return x
    if decomposition == "sum":
        groups = [x * t for pair in terms for t in pair]
    else:
        weights = [torch.ones_like(terms[0][0])]
        for cos, sin in terms:  # expand prod_a (cos_a + sin_a) into 2^A products
            weights = [w * t for w in weights for t in (cos, sin)]
        groups = [x * w for w in weights]
    return torch.cat(groups, dim=-1)


def vicinity_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    decomposition: str = "sum",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Linear vicinity attention, ``phi(Q) (phi(K)^T V) / (phi(Q) . sum phi(K))`` in O(N d^2) time and O(N d) memory.

    Args:
        q: (B, h, N, d) queries (before the ReLU feature map).
        k: (B, h, N, d) keys.
        v: (B, h, N, dv) values.
        grid: token grid (T, H, W), N = T * H * W.
        decomposition: ``"sum"`` or ``"product"``, see :func:`vicinity_features`.
        eps: added to the normaliser.

    Returns:
        (B, h, N, dv)
    """
    dtype = v.dtype
    q, k, v = q.float().relu(), k.float().relu(), v.float()
    q = vicinity_features(q, grid, decomposition)  # (B, h, N, G * d)
    k = vicinity_features(k, grid, decomposition)
    kv = k.transpose(-2, -1) @ v  # (B, h, G * d, dv): the only "attention" state, independent of N
    k_sum = k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, G * d, 1)
    z = 1.0 / (q @ k_sum + eps)  # (B, h, N, 1)
    return ((q @ kv) * z).to(dtype)


class FeaturePreserving(nn.Module):
    """Feature preserving connection: gate the attention output by a squeeze-excitation of the attention input."""

    def __init__(self, dim: int, reduction: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // reduction, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y: (B, N, C) attention output, x: (B, N, C) attention input -> (B, N, C)."""
        gate = self.fc2(self.act(self.fc1(x.mean(dim=1)))).sigmoid()  # (B, C)
        return y + y * gate.unsqueeze(1)


class VicinityAttention(nn.Module):
    """Feature reduction vicinity attention with the feature preserving connection, on (B, N, C) tokens.

    Args:
        dim: token channels.
        num_heads: attention heads (over the reduced channels).
        qkv_bias: bias on the Q, K, V projections.
        feature_reduction: Q, K, V have ``dim // feature_reduction`` channels.
        fp_reduction: hidden-size reduction of the feature preserving connection's two linear layers.
        decomposition: ``"sum"`` or ``"product"`` decay decomposition.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        qkv_bias: bool = True,
        feature_reduction: int = 2,
        fp_reduction: int = 1,
        decomposition: str = "sum",
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        inner = dim // feature_reduction
        if inner % num_heads:
            raise ValueError(
                f"VVT: reduced dim {inner} (dim {dim} / {feature_reduction}) not divisible by {num_heads=}"
            )
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"VVT: decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
        self.num_heads = num_heads
        self.head_dim = inner // num_heads
        self.decomposition = decomposition
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.k = nn.Linear(dim, inner, bias=qkv_bias)
        self.v = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fp = FeaturePreserving(dim, fp_reduction)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """x: (B, N, C) tokens of the grid (T, H, W) -> (B, N, C)."""
        B, N, _ = x.shape
        # (B, N, h * d) -> (B, h, N, d)
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = vicinity_linear_attention(q, k, v, grid, self.decomposition)
        y = y.transpose(1, 2).reshape(B, N, -1)  # (B, h, N, d) -> (B, N, h * d)
        y = self.proj_drop(self.proj(y))
        return self.fp(y, x)


class DWConvMlp(nn.Module):
    """PVTv2 MLP: linear -> depthwise conv over the (T, H, W) grid -> GELU -> linear, on (B, N, C) tokens."""

    def __init__(
        self, dim: int, hidden: int, temporal_kernel: int = 3, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        kt = temporal_kernel
        self.dwconv = nn.Conv3d(hidden, hidden, (kt, 3, 3), padding=(kt // 2, 1, 1), groups=hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        B, N, _ = x.shape
        x = self.fc1(x)
        x = x.transpose(1, 2).reshape(B, -1, *grid)  # (B, N, C) -> (B, C, T, H, W)
        x = self.dwconv(x).flatten(2).transpose(1, 2)  # -> (B, N, C)
        return self.drop(self.fc2(self.drop(self.act(x))))


class Block(nn.Module):
    """LayerNorm -> vicinity attention -> residual, LayerNorm -> depthwise-conv MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        feature_reduction: int = 2,
        fp_reduction: int = 1,
        decomposition: str = "sum",
        temporal_kernel: int = 3,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VicinityAttention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            feature_reduction=feature_reduction,
            fp_reduction=fp_reduction,
            decomposition=decomposition,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DWConvMlp(dim, int(dim * mlp_ratio), temporal_kernel=temporal_kernel, drop=drop)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class Stage(nn.Module):
    """Overlapping patch embedding, blocks, LayerNorm: (B, C_in, T, H, W) -> (B, C, T', H', W')."""

    def __init__(self, in_chans: int, dim: int, depth: int, embed: dict, block: dict, dpr: Sequence[float]) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3d(in_chans, dim, **embed)
        self.blocks = nn.ModuleList(Block(dim, drop_path=dpr[i], **block) for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        B, C, T, H, W = x.shape
        grid = (T, H, W)
        x = x.flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, THW, C)
        x = checkpoint_seq(self.blocks, x, grid, enabled=self.grad_checkpointing and self.training)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(B, C, T, H, W)


class VicinityVisionTransformer(BackboneMixin, nn.Module):
    """Vicinity ViT backbone with a linear classifier, for (B, C, T, H, W) video or (B, C, H, W) images.

    Args:
        num_classes: classifier size (0 for a feature extractor).
        num_frames: frames per clip the model is built for. 1 builds the image model (all temporal kernels 1); any
            other value builds the video model, which runs on any number of frames (one included).
        img_size: square input resolution the model is built for (recorded; the vicinity positions are computed
            from the actual token grid, so any size of at least 32 runs).
        in_chans: input channels.
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP hidden size over dim, per stage.
        depths: blocks per stage.
        qkv_bias: bias on the Q, K, V projections.
        feature_reduction: Q, K, V channel reduction of the attention (2 in the paper).
        fp_reduction: hidden reduction of the feature preserving connection (1 in the official code).
        decomposition: ``"sum"`` (official) or ``"product"`` decay decomposition.
        temporal_kernel: temporal size of the stage-1 embedding and of the MLP depthwise convolutions (video only).
        temporal_stride: temporal stride of the stage-1 embedding (video only).
        drop_rate: dropout in MLPs and projections.
        drop_path_rate: stochastic depth, growing linearly over all blocks.
        head_drop: dropout before the classifier.
        global_pool: how the features are pooled for the head: ``"avg"`` (published), ``"max"`` or
            ``"avgmax"`` (see :func:`~videorec.models.layers.global_pool_tokens`).
    """

    default_inflate = "center"  # keeps the image model's response on a one-frame video
    checkpoint_filter = staticmethod(own_keys_filter("vvt"))  # "vvt-image" for an image model's weights

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (96, 160, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        qkv_bias: bool = True,
        feature_reduction: int = 2,
        fp_reduction: int = 1,
        decomposition: str = "sum",
        temporal_kernel: int = 3,
        temporal_stride: int = 2,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"VVT: num_frames must be >= 1, got {num_frames}")
        if img_size < 32:
            raise ValueError(f"VVT: img_size must be at least 32 (four strided stages), got {img_size}")
        if not len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(depths) == 4:
            raise ValueError("VVT: embed_dims, num_heads, mlp_ratios and depths need 4 stages each")
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"VVT: decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
        self.num_frames = num_frames
        self.img_size = img_size
        self.num_features = embed_dims[-1]
        image = num_frames == 1
        kt, st = (1, 1) if image else (temporal_kernel, temporal_stride)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(4):
            if i == 0:
                embed = dict(kernel_size=(kt, 7, 7), stride=(st, 4, 4), padding=(kt // 2, 3, 3))
            else:
                embed = dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
            block = dict(
                num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i],
                qkv_bias=qkv_bias,
                feature_reduction=feature_reduction,
                fp_reduction=fp_reduction,
                decomposition=decomposition,
                temporal_kernel=1 if image else temporal_kernel,
                drop=drop_rate,
            )
            start = sum(depths[:i])
            in_ch = in_chans if i == 0 else embed_dims[i - 1]
            stages.append(Stage(in_ch, embed_dims[i], depths[i], embed, block, dpr[start : start + depths[i]]))
        self.stages = nn.ModuleList(stages)
        self.global_pool = check_global_pool("VVT", global_pool)
        self.init_head(num_classes, head_drop)
        self.apply(init_weights)

    # --- timm-style uniform API ---
    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay beyond 1-D tensors: none (VVT has no position tables)."""
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.patch_embed", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.\w+\.(\d+)"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) -> (B, C', T', H/32, W/32) (sizes rounded up)."""
        x = as_video(x)
        for stage in self.stages:
            x = stage(x)
        return x


def _create(variant: str, defaults: dict, overrides: dict) -> VicinityVisionTransformer:
    return build_variant(VicinityVisionTransformer, variant, defaults, overrides)


_COMMON = dict(embed_dims=(96, 160, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4))


@register_model
def vvt_t(**kwargs) -> VicinityVisionTransformer:
    """VVT-T (the paper's "tiny"): depths (2, 2, 2, 2); 12.9M params as an image model at 1000 classes."""
    return _create("vvt_t", dict(_COMMON, depths=(2, 2, 2, 2)), kwargs)


@register_model
def vvt_s(**kwargs) -> VicinityVisionTransformer:
    """VVT-S: depths (3, 3, 9, 3); 25.5M params as an image model at 1000 classes."""
    return _create("vvt_s", dict(_COMMON, depths=(3, 3, 9, 3)), kwargs)


@register_model
def vvt_tiny(**kwargs) -> VicinityVisionTransformer:
    """A small VVT for tests and the embedded-dataset demo: 8 frames (no temporal stride), 64 px, CPU-fast."""
    defaults = dict(
        embed_dims=(32, 64, 96, 128),
        num_heads=(1, 1, 2, 2),
        mlp_ratios=(4, 4, 4, 4),
        depths=(1, 1, 1, 1),
        num_frames=8,
        temporal_stride=1,  # keep all 8 frames: the embedded classes are told apart by motion
        img_size=64,
        num_classes=8,
    )
    return _create("vvt_tiny", defaults, kwargs)
