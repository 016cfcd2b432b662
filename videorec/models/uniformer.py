"""UniFormer for video: "UniFormer: Unified Transformer for Efficient Spatiotemporal Representation Learning"
(Li et al., ICLR 2022, arXiv 2201.09450).

Four stages. Every block starts with the dynamic position embedding ``x + DWConv3d_3x3x3(x)``. Stages 1-2 use local
multi-head relation aggregation (MHRA): BatchNorm3d, 1x1x1 conv, a 5x5x5 depthwise conv (the local "attention"),
1x1x1 conv, then a convolutional MLP. Stages 3-4 use global MHRA: joint space-time self-attention over all
T*H*W tokens through the shared SDPA core, then a linear MLP. Parameter names follow the official release so that
its 3D (PySlowFast) and 2D (ImageNet) checkpoints load without renaming; 2D kernels are inflated on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn as nn

from .checkpoints import FilterNotes, FormatNote, implied_settings
from .layers import (
    Attention,
    BackboneMixin,
    DropPath,
    Mlp,
    PatchEmbed3d,
    as_video,
    check_global_pool,
    checkpoint_seq,
    drop_path_rates,
    init_weights,
)
from .registry import build_variant, register_model

__all__ = ["UniFormer", "LocalBlock", "GlobalBlock"]


class LocalBlock(nn.Module):
    """DPE + local MHRA + conv MLP, all on (B, C, T, H, W). Official name: CBlock."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        # local MHRA: 1x1x1 conv -> depthwise 5x5x5 conv ("attn", the official name) -> 1x1x1 conv
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, use_conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalBlock(nn.Module):
    """DPE + global MHRA (joint space-time attention over T*H*W tokens) + MLP. Official name: SABlock."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, T, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, THW, C)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, C, T, H, W)


def _stage_blocks(
    dim: int,
    dpr: Sequence[float],
    local: bool,
    head_dim: int,
    mlp_ratio: float,
    qkv_bias: bool,
    drop: float,
    attn_drop: float,
) -> nn.ModuleList:
    """The blocks of one stage, one per drop-path rate in ``dpr``: local MHRA (stages 1-2) or global MHRA (3-4)."""
    if local:
        return nn.ModuleList(LocalBlock(dim, mlp_ratio, drop, p) for p in dpr)
    return nn.ModuleList(GlobalBlock(dim, dim // head_dim, mlp_ratio, qkv_bias, drop, attn_drop, p) for p in dpr)


_VIDEO = "Sense-X/UniFormer video_classification/slowfast/models/uniformer.py, slowfast/config/defaults.py"
_IMAGE = "Sense-X/UniFormer image_classification/models/uniformer.py"
_TL = "Sense-X/UniFormer image_classification/token_labeling/tlt/models/uniformer.py"
FORMAT_NOTES: list[FormatNote] = [
    # official 3D (video) checkpoints: 5-D patch_embed1.proj.weight, in "model_state" or "model"
    FormatNote("uniformer", "LayerNorm eps (global blocks)", "1e-6 (partial(nn.LayerNorm, eps=1e-6))", _VIDEO),
    FormatNote("uniformer", "LayerNorm eps (patch embeddings)", "1e-5 (nn.LayerNorm(embed_dim))", _VIDEO),
    FormatNote("uniformer", "BatchNorm (local blocks, final norm)", "BatchNorm3d, eps 1e-5", _VIDEO),
    FormatNote("uniformer", "qkv bias / attention scale", "True (UNIFORMER.QKV_BIAS) / head_dim ** -0.5", _VIDEO),
    FormatNote("uniformer", "GELU", "exact (act_layer=nn.GELU)", _VIDEO),
    FormatNote(
        "uniformer", "head", "mean over T'H'W' after the final BatchNorm, Linear; no dropout, no activation "
        "(MODEL.HEAD_ACT and MODEL.DROPOUT_RATE are not read by Uniformer)", _VIDEO,
    ),
    FormatNote(
        "uniformer", "stem / patch embeddings", "(3, 4, 4) stride (2, 4, 4) pad (1, 0, 0), then (1, 2, 2) "
        "(UNIFORMER.STD False; STD True has (3, 2, 2) kernels, a shape the loader rejects by name)", _VIDEO,
    ),
    FormatNote("uniformer", "pre_logits", "nn.Identity (REPRESENTATION_SIZE None): no tensors", _VIDEO),
    # official 2D (ImageNet) checkpoints: 4-D patch_embed1.proj.weight, in "model"
    FormatNote("uniformer-2d", "LayerNorm eps (global blocks)", "1e-6 (uniformer_small / _base)", _IMAGE),
    FormatNote("uniformer-2d", "LayerNorm eps (patch embeddings)", "1e-5", _IMAGE),
    FormatNote("uniformer-2d", "BatchNorm (local blocks, final norm)", "BatchNorm2d, eps 1e-5", _IMAGE),
    FormatNote("uniformer-2d", "qkv bias / attention scale / GELU", "True / head_dim ** -0.5 / exact", _IMAGE),
    FormatNote("uniformer-2d", "head", "mean after the final BatchNorm, Linear", _IMAGE),
    FormatNote("uniformer-2d", "kernels", "2D, inflated on load (inflate='mean', the official inflate_weight)", _IMAGE),
    # token-labeling 2D checkpoints (uniformer_*_tl_*): an aux_head
    FormatNote(
        "uniformer-2d-token-labeling", "head", "eval logits = head(mean) + 0.5 * max over tokens of "
        "aux_head(tokens); aux_head is dropped (reported), the backbone and head load as uniformer-2d", _TL,
    ),
    FormatNote("uniformer-2d-token-labeling", "norms, bias, scale, GELU", "as uniformer-2d", _TL),
    FormatNote(
        "uniformer", "our own checkpoints", "the same key names and settings (a Lightning checkpoint's "
        "backbone_kwargs hold no UniFormer format setting)", "videorec.lit.VideoClassifier",
    ),
]  # fmt: skip
"""Every UniFormer format's settings that change outputs without changing key names or shapes, with the source file:
all of them are our defaults, so no format implies a setting."""

FORMAT_SETTINGS: dict[str, dict[str, object]] = implied_settings(FORMAT_NOTES)  # empty: see FORMAT_NOTES


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: UniFormer) -> tuple[dict, str, FilterNotes]:
    """Official UniFormer checkpoints share our key names; 2D (ImageNet) kernels are inflated later, generically.

    ``pre_logits.*`` (the optional representation layer, absent from the released files) and a token-labeling
    model's ``aux_head.*`` are dropped and reported.
    """
    is_2d = state_dict.get("patch_embed1.proj.weight", torch.empty(0, 0, 0, 0, 0)).ndim == 4
    notes = FilterNotes()
    out = {}
    for key, value in state_dict.items():
        if key.startswith("pre_logits."):
            notes.dropped[key] = "representation layer, not part of the model"
        elif key.startswith("aux_head."):
            notes.dropped[key] = "token-labeling auxiliary head, not part of the model"
        else:
            out[key] = value
    fmt = "uniformer-2d" if is_2d else "uniformer"
    if is_2d and any(k.startswith("aux_head.") for k in state_dict):
        fmt = "uniformer-2d-token-labeling"
    return out, fmt, notes


class UniFormer(BackboneMixin, nn.Module):
    """UniFormer video backbone with a linear classifier.

    Args:
        num_classes: classifier size (0 for a feature extractor).
        num_frames: frames per clip the model is built for (recorded; any count >= 1 runs).
        img_size: square input resolution the model is built for (a multiple of 32).
        in_chans: input channels.
        depths: blocks per stage.
        embed_dims: channels per stage.
        head_dim: channels per attention head; heads = dim // head_dim.
        mlp_ratio: MLP hidden size over dim.
        qkv_bias: bias on the qkv projection.
        drop_rate: dropout after the stem and in MLPs / projections.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, growing linearly over all blocks.
        head_drop: dropout before the classifier.
        global_pool: how the features are pooled for the head: ``"avg"`` (published), ``"max"`` or
            ``"avgmax"`` (see :func:`~videorec.models.layers.global_pool_tokens`).
        temporal_kernel: temporal size of the stage-1 patch embedding (stride 2 in time when > 1).
    """

    default_inflate = "mean"  # the official 2D -> 3D inflation
    checkpoint_filter = staticmethod(checkpoint_filter_fn)
    format_settings = FORMAT_SETTINGS

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 4, 8, 3),
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        global_pool: str = "avg",
        temporal_kernel: int = 3,
    ) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"UniFormer: img_size must be a multiple of 32 (four strided stages), got {img_size}")
        if num_frames < 1:
            raise ValueError(f"UniFormer: num_frames must be >= 1, got {num_frames}")
        if len(depths) != 4 or len(embed_dims) != 4:
            raise ValueError(f"UniFormer: depths and embed_dims need 4 stages, got {depths} and {embed_dims}")
        if any(d % head_dim for d in embed_dims[2:]):
            raise ValueError(f"UniFormer: global-stage dims {embed_dims[2:]} must be multiples of head_dim={head_dim}")
        self.num_frames = num_frames
        self.img_size = img_size
        self.num_features = embed_dims[-1]

        t = temporal_kernel
        self.patch_embed1 = PatchEmbed3d(
            in_chans, embed_dims[0], kernel_size=(t, 4, 4), stride=(2 if t > 1 else 1, 4, 4), padding=(t // 2, 0, 0)
        )
        self.patch_embed2 = PatchEmbed3d(embed_dims[0], embed_dims[1], kernel_size=(1, 2, 2))
        self.patch_embed3 = PatchEmbed3d(embed_dims[1], embed_dims[2], kernel_size=(1, 2, 2))
        self.patch_embed4 = PatchEmbed3d(embed_dims[2], embed_dims[3], kernel_size=(1, 2, 2))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = drop_path_rates(drop_path_rate, depths)
        bounds = [0, *accumulate(depths)]
        # official names: blocks1 .. blocks4
        self.blocks1, self.blocks2, self.blocks3, self.blocks4 = (
            _stage_blocks(
                embed_dims[i],
                dpr[bounds[i] : bounds[i + 1]],
                local=i < 2,
                head_dim=head_dim,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
            )
            for i in range(4)
        )
        self.norm = nn.BatchNorm3d(embed_dims[-1])
        self.global_pool = check_global_pool("UniFormer", global_pool)
        self.init_head(num_classes, head_drop)
        self.apply(init_weights)

    # --- timm-style uniform API ---
    def no_weight_decay(self) -> set[str]:
        """Names (beyond 1-D tensors) excluded from weight decay: the dynamic position embeddings."""
        return {n for n, _ in self.named_parameters() if ".pos_embed." in n}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) -> (B, C', T', H/32, W/32)."""
        x = as_video(x)
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"UniFormer: input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        ckpt = self.grad_checkpointing and self.training
        x = checkpoint_seq(self.blocks1, self.pos_drop(self.patch_embed1(x)), enabled=ckpt)
        x = checkpoint_seq(self.blocks2, self.patch_embed2(x), enabled=ckpt)
        x = checkpoint_seq(self.blocks3, self.patch_embed3(x), enabled=ckpt)
        x = checkpoint_seq(self.blocks4, self.patch_embed4(x), enabled=ckpt)
        return self.norm(x)


def _create(variant: str, defaults: dict, overrides: dict) -> UniFormer:
    return build_variant(UniFormer, variant, defaults, overrides)


@register_model
def uniformer_s(**kwargs) -> UniFormer:
    """UniFormer-S: depths (3, 4, 8, 3), 21.4M params, 41.8 GFLOPs at 16x224x224."""
    return _create("uniformer_s", dict(depths=(3, 4, 8, 3), embed_dims=(64, 128, 320, 512), head_dim=64), kwargs)


@register_model
def uniformer_b(**kwargs) -> UniFormer:
    """UniFormer-B: depths (5, 8, 20, 7), 49.8M params, 96.7 GFLOPs at 16x224x224."""
    return _create("uniformer_b", dict(depths=(5, 8, 20, 7), embed_dims=(64, 128, 320, 512), head_dim=64), kwargs)


@register_model
def uniformer_tiny(**kwargs) -> UniFormer:
    """A small UniFormer for tests and the embedded-dataset demo (CPU-friendly)."""
    defaults = dict(
        depths=(1, 1, 2, 1), embed_dims=(32, 64, 128, 128), head_dim=32, num_frames=8, img_size=64, num_classes=8
    )
    return _create("uniformer_tiny", defaults, kwargs)
