"""XFormer for video: "Lightweight Vision Transformer with Cross Feature Attention" (Zhao et al., arXiv 2207.07268).

A MobileViT-style CNN-transformer hybrid. A strided stem convolution is followed by five stages: two of MobileNetV3
blocks (inverted residual with expansion 4, depthwise convolution, squeeze-excitation), then three stages of one
strided MobileNetV3 block plus an XF stage. An XF stage is MobileViT's block with XF blocks as its transformer:
local convolution -> 1x1 projection to the embedding dim -> unfold into 2x2 patches (pixels at the same position of
every patch form one token sequence) -> XF blocks (LayerNorm -> cross feature attention -> residual, LayerNorm ->
MLP -> residual) -> LayerNorm -> fold -> 1x1 projection back -> fusion convolution of the stage input and the result.
XF embedding dims (144, 192, 240), MLP ratios (2, 2, 3), Q/K/V width 96, GELU in the MLPs, SiLU elsewhere.

No official code is public, and the paper leaves a number of choices open. Ours, all written here:

* Cross feature attention (XFA). Per head, with Q, K, V of shape (N, d): Q and K are L2-normalised along the feature
  dimension. The feature-context score ``F = K^T V / N`` (d x d) relates every key feature to every value feature
  over all tokens ("cross features") - a map whose size does not depend on N. The token-context score of a query
  token is ``s_n = tau * (Q_n * w)`` with a learned feature kernel ``w`` (d, initialised to ones) and a learnable
  per-head temperature ``tau`` (initialised to 1). The output is ``s_n F``: no softmax, O(N d^2) time and O(N d)
  memory. It equals attention with the map ``A = tau Q diag(w) K^T / N`` (cosine similarities, bounded by ``tau``),
  which is never built. One head over the 96 Q/K/V channels by default (``xfa_heads``).
* Q, K and V come from one bias-free linear layer (dim -> 3 x 96); a linear layer with bias projects 96 -> dim.
* XF stage depths (2, 4, 3) as in MobileViT-S, whose layout XFormer follows; the stem has 16 channels and the stage
  outputs are (32, 64, 96, 128, 160) with a 1x1 convolution to 640 before pooling (MobileViT-S's widths). With
  these the image model has 5.47M parameters at 1000 classes, against the paper's 5.5M.
* MobileNetV3 blocks use SiLU (the paper, arXiv 2207.07268, has GELU only in the XF blocks' MLP) and a
  squeeze-excitation with SiLU and a sigmoid gate whose hidden size is a quarter of the expanded channels; the stem
  block (16 -> 32) also expands by 4.
* A feature map whose height or width is odd is resized (trilinear) to the next multiple of the patch size before
  unfolding and back afterwards, as MobileViT does; patches are 1x2x2, so tokens from all frames at one position of
  the 2x2 patch attend together.

Video choices (ours; the paper is 2D): the stem is a (3, 3, 3) convolution with temporal stride 2 and every
depthwise convolution is 3x3x3, while the dense 3x3 convolutions of the XF stages stay (1, 3, 3), which keeps the
video model close to the image model's size. Building with ``num_frames=1`` gives the image model (all temporal
kernels 1); its weights load into a video model through the generic loader's ``"center"`` inflation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import own_keys_filter
from .layers import (
    BackboneMixin,
    DropPath,
    Mlp,
    as_video,
    check_global_pool,
    checkpoint_seq,
    drop_path_rates,
    init_weights,
)
from .registry import build_variant, register_model

__all__ = ["XFormer", "CrossFeatureAttention", "XFBlock", "XFStage", "MV3Block", "SqueezeExcite"]


def cross_feature_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """XFA core: ``tau (norm(Q) * w) (norm(K)^T V / N)`` per head, O(N d^2), never N x N.

    Args:
        q: (B, h, N, d) queries.
        k: (B, h, N, d) keys.
        v: (B, h, N, dv) values.
        kernel: (h, 1, d) learned feature kernel ``w``.
        temperature: (h, 1, 1) learnable temperature ``tau``.

    Returns:
        (B, h, N, dv)
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    context = k.transpose(-2, -1) @ v / k.shape[-2]  # feature-context score (B, h, d, dv)
    return (q * (kernel * temperature)) @ context  # token-context score x feature context -> (B, h, N, dv)


class CrossFeatureAttention(nn.Module):
    """Cross feature attention on (B, N, C) tokens: linear in N, no softmax (see the module docstring).

    Args:
        dim: token channels.
        qkv_dim: width of Q, K and V (96 in the paper).
        num_heads: heads over ``qkv_dim``.
        qkv_bias: bias on the fused Q/K/V projection.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self, dim: int, qkv_dim: int = 96, num_heads: int = 1, qkv_bias: bool = False, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if qkv_dim % num_heads:
            raise ValueError(f"XFormer: qkv_dim {qkv_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = qkv_dim // num_heads
        self.qkv = nn.Linear(dim, 3 * qkv_dim, bias=qkv_bias)
        self.kernel = nn.Parameter(torch.ones(num_heads, 1, self.head_dim))
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(qkv_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        # (B, N, 3 * h * d) -> (3, B, h, N, d)
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = cross_feature_attention(q, k, v, self.kernel, self.temperature)
        y = y.transpose(1, 2).reshape(B, N, -1)  # (B, h, N, d) -> (B, N, h * d)
        return self.proj_drop(self.proj(y))


class XFBlock(nn.Module):
    """LayerNorm -> cross feature attention -> residual, LayerNorm -> MLP (GELU) -> residual, on (B', N, C)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 2.0,
        qkv_dim: int = 96,
        num_heads: int = 1,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossFeatureAttention(dim, qkv_dim=qkv_dim, num_heads=num_heads, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvNormAct(nn.Sequential):
    """Conv3d (no bias) -> BatchNorm3d -> optional activation."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        groups: int = 1,
        act: bool = True,
    ) -> None:
        padding = tuple(k // 2 for k in kernel_size)
        super().__init__(
            nn.Conv3d(in_chans, out_chans, kernel_size, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm3d(out_chans),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


class SqueezeExcite(nn.Module):
    """Squeeze-excitation on (B, C, T, H, W): global average -> 1x1 -> SiLU -> 1x1 -> sigmoid gate."""

    def __init__(self, chans: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, chans // reduction)
        self.fc1 = nn.Conv3d(chans, hidden, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv3d(hidden, chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, C, 1, 1, 1)
        return x * self.fc2(self.act(self.fc1(s))).sigmoid()


class MV3Block(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand -> depthwise (kt, 3, 3) -> squeeze-excite -> 1x1 project."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int = 1,
        expansion: float = 4.0,
        temporal_kernel: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(round(in_chans * expansion))
        self.use_residual = stride == 1 and in_chans == out_chans
        self.expand = ConvNormAct(in_chans, hidden)
        self.dw = ConvNormAct(hidden, hidden, (temporal_kernel, 3, 3), stride=(1, stride, stride), groups=hidden)
        self.se = SqueezeExcite(hidden)
        self.project = ConvNormAct(hidden, out_chans, act=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(y) if self.use_residual else y


class XFStage(nn.Module):
    """MobileViT-style block with XF blocks as its transformer, on (B, C, T, H, W).

    Args:
        chans: input and output channels.
        dim: embedding dim of the XF blocks.
        depth: number of XF blocks.
        mlp_ratio: MLP hidden size over ``dim``.
        qkv_dim: XFA Q/K/V width.
        num_heads: XFA heads.
        patch_size: (pt, ph, pw) unfolding patch; tokens at one position of every patch attend together.
        drop: dropout in the XF blocks.
        dpr: drop-path rate per XF block.
    """

    def __init__(
        self,
        chans: int,
        dim: int,
        depth: int,
        mlp_ratio: float = 2.0,
        qkv_dim: int = 96,
        num_heads: int = 1,
        patch_size: Sequence[int] = (1, 2, 2),
        drop: float = 0.0,
        dpr: Sequence[float] = (),
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.local = ConvNormAct(chans, chans, (1, 3, 3))
        self.to_tokens = nn.Conv3d(chans, dim, 1, bias=False)
        dpr = list(dpr) or [0.0] * depth
        self.blocks = nn.ModuleList(
            XFBlock(dim, mlp_ratio, qkv_dim=qkv_dim, num_heads=num_heads, drop=drop, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.from_tokens = ConvNormAct(dim, chans)
        self.fusion = ConvNormAct(2 * chans, chans, (1, 3, 3))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        y = self.to_tokens(self.local(x))
        B, D, T, H, W = y.shape
        pt, ph, pw = self.patch_size
        size = (math.ceil(T / pt) * pt, math.ceil(H / ph) * ph, math.ceil(W / pw) * pw)
        resized = size != (T, H, W)
        if resized:
            y = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
        t, h, w = size[0] // pt, size[1] // ph, size[2] // pw
        # unfold: (B, D, t*pt, h*ph, w*pw) -> (B * pt*ph*pw, t*h*w, D)
        y = y.reshape(B, D, t, pt, h, ph, w, pw).permute(0, 3, 5, 7, 2, 4, 6, 1).reshape(B * pt * ph * pw, t * h * w, D)
        y = checkpoint_seq(self.blocks, y, enabled=self.grad_checkpointing and self.training)
        y = self.norm(y)
        # fold: (B * pt*ph*pw, t*h*w, D) -> (B, D, t*pt, h*ph, w*pw)
        y = y.reshape(B, pt, ph, pw, t, h, w, D).permute(0, 7, 4, 1, 5, 2, 6, 3).reshape(B, D, *size)
        if resized:
            y = F.interpolate(y, size=(T, H, W), mode="trilinear", align_corners=False)
        y = self.from_tokens(y)
        return self.fusion(torch.cat([shortcut, y], dim=1))


class XFormer(BackboneMixin, nn.Module):
    """XFormer backbone with a linear classifier, for (B, C, T, H, W) video or (B, C, H, W) images.

    Args:
        num_classes: classifier size (0 for a feature extractor).
        num_frames: frames per clip the model is built for. 1 builds the image model (all temporal kernels 1); any
            other value builds the video model, which runs on any number of frames (one included).
        img_size: square input resolution the model is built for (recorded; any size of at least 32 runs).
        in_chans: input channels.
        stem_chans: stem output channels.
        mv3_chans: output channels of the two MobileNetV3 stages.
        mv3_depths: MobileNetV3 blocks in those stages (the first block of stage 2 has stride 2).
        xf_chans: output channels of the three XF stages (each begins with a stride-2 MobileNetV3 block).
        xf_dims: XF embedding dims.
        xf_depths: XF blocks per XF stage.
        mlp_ratios: XF MLP ratios.
        qkv_dim: XFA Q/K/V width.
        xfa_heads: XFA heads.
        expansion: MobileNetV3 expansion ratio.
        head_chans: channels of the 1x1 convolution before pooling.
        temporal_kernel: temporal size of the stem and of the depthwise convolutions (video only).
        temporal_stride: temporal stride of the stem (video only).
        drop_rate: dropout in the XF blocks.
        drop_path_rate: stochastic depth over the MobileNetV3 and XF blocks, growing linearly.
        head_drop: dropout before the classifier.
        global_pool: how the features are pooled for the head: ``"avg"`` (published), ``"max"`` or
            ``"avgmax"`` (see :func:`~videorec.models.layers.global_pool_tokens`).
    """

    default_inflate = "center"  # keeps the image model's response on a one-frame video
    checkpoint_filter = staticmethod(own_keys_filter("xformer"))  # "xformer-image" for an image model's weights

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 256,
        in_chans: int = 3,
        stem_chans: int = 16,
        mv3_chans: Sequence[int] = (32, 64),
        mv3_depths: Sequence[int] = (1, 3),
        xf_chans: Sequence[int] = (96, 128, 160),
        xf_dims: Sequence[int] = (144, 192, 240),
        xf_depths: Sequence[int] = (2, 4, 3),
        mlp_ratios: Sequence[float] = (2, 2, 3),
        qkv_dim: int = 96,
        xfa_heads: int = 1,
        expansion: float = 4.0,
        head_chans: int = 640,
        temporal_kernel: int = 3,
        temporal_stride: int = 2,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"XFormer: num_frames must be >= 1, got {num_frames}")
        if img_size < 32:
            raise ValueError(f"XFormer: img_size must be at least 32 (five strided stages), got {img_size}")
        if len(mv3_chans) != 2 or len(mv3_depths) != 2:
            raise ValueError("XFormer: mv3_chans and mv3_depths need 2 stages")
        if not len(xf_chans) == len(xf_dims) == len(xf_depths) == len(mlp_ratios) == 3:
            raise ValueError("XFormer: xf_chans, xf_dims, xf_depths and mlp_ratios need 3 stages")
        self.num_frames = num_frames
        self.img_size = img_size
        self.num_features = head_chans
        image = num_frames == 1
        kt, st = (1, 1) if image else (temporal_kernel, temporal_stride)

        self.stem = ConvNormAct(in_chans, stem_chans, (kt, 3, 3), stride=(st, 2, 2))
        dpr = iter(drop_path_rates(drop_path_rate, sum(mv3_depths) + sum(xf_depths) + len(xf_depths)))
        stages: list[nn.Module] = []
        ch = stem_chans
        for i, (out_ch, depth) in enumerate(zip(mv3_chans, mv3_depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i == 1 and j == 0) else 1
                blocks.append(MV3Block(ch, out_ch, stride, expansion, temporal_kernel=kt, drop_path=next(dpr)))
                ch = out_ch
            stages.append(nn.Sequential(*blocks))
        for out_ch, dim, depth, ratio in zip(xf_chans, xf_dims, xf_depths, mlp_ratios, strict=True):
            down = MV3Block(ch, out_ch, 2, expansion, temporal_kernel=kt, drop_path=next(dpr))
            xf_dpr = [next(dpr) for _ in range(depth)]
            xf = XFStage(out_ch, dim, depth, ratio, qkv_dim=qkv_dim, num_heads=xfa_heads, drop=drop_rate, dpr=xf_dpr)
            stages.append(nn.Sequential(down, xf))
            ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.conv_head = ConvNormAct(ch, head_chans)
        self.global_pool = check_global_pool("XFormer", global_pool)
        self.init_head(num_classes, head_drop)
        self.apply(init_weights)

    # --- timm-style uniform API ---
    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay beyond 1-D tensors: the XFA kernels and temperatures."""
        return {n for n, _ in self.named_parameters() if n.endswith((".attn.kernel", ".attn.temperature"))}

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) -> (B, 640, T', H/32, W/32) (sizes rounded up)."""
        x = self.stem(as_video(x))
        for stage in self.stages:
            x = stage(x)
        return self.conv_head(x)


def _create(variant: str, defaults: dict, overrides: dict) -> XFormer:
    return build_variant(XFormer, variant, defaults, overrides)


@register_model
def xformer(**kwargs) -> XFormer:
    """XFormer: 5.5M params as an image model (1000 classes, 256 px)."""
    return _create("xformer", dict(img_size=256), kwargs)


@register_model
def xformer_tiny(**kwargs) -> XFormer:
    """A small XFormer for tests and the embedded-dataset demo: 8 frames (no temporal stride), 64 px, CPU-fast."""
    defaults = dict(
        stem_chans=8,
        mv3_chans=(16, 24),
        mv3_depths=(1, 1),
        xf_chans=(32, 48, 64),
        xf_dims=(48, 64, 80),
        xf_depths=(1, 1, 1),
        mlp_ratios=(2, 2, 2),
        qkv_dim=32,
        expansion=2.0,
        head_chans=128,
        num_frames=8,
        temporal_stride=1,  # keep all 8 frames: the embedded classes are told apart by motion
        img_size=64,
        num_classes=8,
    )
    return _create("xformer_tiny", defaults, kwargs)
