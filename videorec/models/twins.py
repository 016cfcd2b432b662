"""Spatiotemporal Twins: "Twins: Revisiting the Design of Spatial Attention in Vision Transformers"
(Chu et al., NeurIPS 2021, arXiv 2104.13840), extended from images to video.

Two families share one pyramid of four stages (a strided patch embedding, then blocks of attention + MLP, with a
position encoding generator, PEG, after the first block of each stage):

* Twins-PCPVT: every block uses global sub-sampled attention (GSA). Queries are all T*H*W tokens; keys and values come
  from a strided Conv3d with a (t, h, w) reduction ratio followed by a LayerNorm.
* Twins-SVT: blocks alternate locally-grouped self-attention (LSA, inside non-overlapping (t, h, w) windows) and GSA.
  A token grid that a window does not divide is padded and the padded keys are masked out, so padding never changes
  the result.

All softmax attention runs through the shared :func:`~videorec.models.layers.attention` core.

Video design choices (ours; the papers are image-only):

* Stage 1 embeds tubelets of ``temporal_patch`` frames (default 2, so 16 frames -> 8 token frames); stages 2-4
  only downsample space. K/V sub-sampling of GSA reduces time by ``temporal_sr_ratios`` (default 1: the temporal
  patch already halves T, and a temporal ratio of 2 in stage 1 would add 0.8M parameters to PCPVT-S, 3% over the
  image model); the PEG is a depthwise 3x3x3 conv.
* Every conv with a temporal extent pads time "same"-style (``ceil(T / stride)`` output frames). By default
  (``temporal_padding="zeros"``) the padding is zeros, which lets the PEG tell where the clip starts and ends (zero
  padding is how CPVT's PEG encodes absolute position; the embedded dataset's "turn early" / "turn late" classes need
  it in time). ``"replicate"`` repeats the edge frames instead, so that a static video gives exactly the image
  response.
* A one-frame input is an image: every temporal tap would see that frame (or zeros), and we define the conv as the
  2D conv with the kernel summed over time, which is the 2D kernel itself for both inflation modes ("mean" and
  "center"). A one-frame video therefore reproduces the image model exactly whatever the inflation, at the image
  model's FLOPs. (Zero padding alone would keep only the centre tap, exact for "center" inflation but scaled by
  1 / k_t for "mean".)

Parameter names follow timm's ``twins.py`` (except the PEG, ``pos_block.i.proj`` instead of ``pos_block.i.proj.0``),
so timm ``twins_pcpvt_small`` / ``twins_svt_small`` state dicts load through :func:`checkpoint_filter_fn`, with 2D
kernels inflated by :mod:`videorec.models.checkpoints`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import FormatNote, implied_settings
from .layers import (
    BackboneMixin,
    DropPath,
    Mlp,
    as_video,
    attention,
    check_global_pool,
    checkpoint_seq,
    drop_path_rates,
    init_weights,
    to_3tuple,
)
from .registry import build_variant, register_model

__all__ = [
    "Twins",
    "SameTimeConv3d",
    "GlobalSubSampleAttn3d",
    "LocallyGroupedAttn3d",
    "PosConv3d",
    "Block",
    "checkpoint_filter_fn",
]

Size3 = tuple[int, int, int]
TEMPORAL_PADDINGS = ("zeros", "replicate")
LSA_PADDINGS = ("masked", "zeros")


class SameTimeConv3d(nn.Conv3d):
    """Conv3d that pads time so that ``ceil(T / stride_t)`` frames come out, with zeros or replicated edge frames.

    Space is padded by ``spatial_padding`` zeros, as the 2D model does. A one-frame input runs as a 2D conv with the
    kernel summed over time (what replicate padding computes), so an image meets the 2D kernel whatever the
    inflation mode.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: (t, h, w) kernel, or one int for all three.
        stride: (t, h, w) stride, or one int for all three.
        spatial_padding: zero padding of (h, w).
        groups: conv groups.
        temporal_padding: ``"zeros"`` or ``"replicate"``.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        spatial_padding: Sequence[int] = (0, 0),
        groups: int = 1,
        temporal_padding: str = "zeros",
    ) -> None:
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
        super().__init__(
            in_chans,
            out_chans,
            to_3tuple(kernel_size),
            stride=to_3tuple(stride),
            padding=(0, *spatial_padding),
            groups=groups,
        )
        self.temporal_padding = temporal_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, st = self.kernel_size[0], self.stride[0]
        T = x.shape[2]
        if kt == 1:  # no temporal extent: ceil(T / st) frames come out without padding
            return super().forward(x)
        if T == 1:
            # an image: every tap sees the same frame, (O, I, kt, kh, kw) -> (O, I, 1, kh, kw) summed kernel, a 2D conv
            weight = self.weight.sum(2, keepdim=True)
            return F.conv3d(x, weight, self.bias, (1, *self.stride[1:]), self.padding, self.dilation, self.groups)
        out_t = -(-T // st)
        pad = max((out_t - 1) * st + kt - T, 0)
        if pad:
            # the larger half goes first: on one frame, frame 0 then meets tap kt // 2 ("center" inflation's tap)
            mode = "replicate" if self.temporal_padding == "replicate" else "constant"
            x = F.pad(x, (0, 0, 0, 0, pad - pad // 2, pad // 2), mode=mode)  # (B, C, T + pad, H, W)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temporal_padding={self.temporal_padding}"


class PatchEmbed(nn.Module):
    """Strided patch embedding + LayerNorm: (B, C, T, H, W) -> tokens (B, T'H'W', C') and the grid (T', H', W')."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: Sequence[int],
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        self.proj = SameTimeConv3d(
            in_chans, embed_dim, patch_size, stride=patch_size, temporal_padding=temporal_padding
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size3]:
        x = self.proj(x)  # (B, C', T', H', W')
        size = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, C', T'H'W') -> (B, N, C')
        return self.norm(x), size  # type: ignore[return-value]


class PosConv3d(nn.Module):
    """Position encoding generator (PEG): ``x + DWConv3d(x)`` on tokens of a (T, H, W) grid."""

    def __init__(self, dim: int, kernel_size: int | Sequence[int] = 3, temporal_padding: str = "zeros") -> None:
        super().__init__()
        kt, kh, kw = to_3tuple(kernel_size)
        self.proj = SameTimeConv3d(
            dim, dim, (kt, kh, kw), spatial_padding=(kh // 2, kw // 2), groups=dim, temporal_padding=temporal_padding
        )

    def forward(self, x: torch.Tensor, size: Size3) -> torch.Tensor:
        B, N, C = x.shape
        feat = x.transpose(1, 2).reshape(B, C, *size)  # (B, N, C) -> (B, C, T, H, W)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)  # -> (B, N, C)


class GlobalSubSampleAttn3d(nn.Module):
    """GSA: every token attends to keys/values sub-sampled by a strided (t, h, w) conv + LayerNorm.

    Args:
        dim: channels.
        num_heads: attention heads.
        sr_ratio: (t, h, w) reduction of the key/value grid; (1, 1, 1) attends to all tokens.
        attn_drop: attention dropout.
        proj_drop: dropout after the output projection.
        temporal_padding: how the reduction conv pads time (see :class:`SameTimeConv3d`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        sr_ratio: Sequence[int] = (1, 1, 1),
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        temporal_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Twins: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = to_3tuple(sr_ratio)
        if max(self.sr_ratio) > 1:
            self.sr = SameTimeConv3d(dim, dim, self.sr_ratio, stride=self.sr_ratio, temporal_padding=temporal_padding)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = None
            self.norm = None

    def forward(self, x: torch.Tensor, size: Size3) -> torch.Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(B, N, h, d).transpose(1, 2)  # (B, N, C) -> (B, h, N, d)
        if self.sr is not None:
            if size[1] < self.sr_ratio[1] or size[2] < self.sr_ratio[2]:
                raise ValueError(
                    f"Twins: a {size[1]}x{size[2]} token grid is smaller than the spatial reduction ratio "
                    f"{self.sr_ratio[1:]}; use a larger input"
                )
            x = x.transpose(1, 2).reshape(B, C, *size)  # (B, N, C) -> (B, C, T, H, W)
            x = self.sr(x).flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, M, C)
            x = self.norm(x)
        kv = self.kv(x).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # (B, M, 2C) -> (2, B, h, M, d)
        k, v = kv.unbind(0)
        x = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class LocallyGroupedAttn3d(nn.Module):
    """LSA: self-attention inside non-overlapping (t, h, w) windows.

    With ``padding="masked"`` (ours) a window larger than the grid along an axis shrinks to the grid (one window
    spans that axis); otherwise a grid the window does not divide is zero-padded at the end and the padded keys are
    masked out of every softmax, so each window attends over its real tokens only (queries at padded positions are
    computed and discarded). With ``padding="zeros"`` (timm's ``LocallyGroupedAttn``) the spatial axes are padded to
    a multiple of the full window with zero tokens that every query attends to (their keys and values are the qkv
    bias); time stays as with ``"masked"``. The two agree whenever the window divides the grid (224 px inputs).

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: (t, h, w) window.
        attn_drop: attention dropout.
        proj_drop: dropout after the output projection.
        padding: ``"masked"`` or ``"zeros"``, see above.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: Sequence[int] = (2, 7, 7),
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        padding: str = "masked",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Twins: dim {dim} is not divisible by num_heads {num_heads}")
        if padding not in LSA_PADDINGS:
            raise ValueError(f"Twins: lsa_padding must be one of {LSA_PADDINGS}, got {padding!r}")
        self.padding = padding
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = to_3tuple(window_size)
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: Size3) -> torch.Tensor:
        B, N, C = x.shape
        T, H, W = size
        if self.padding == "masked":
            wt, wh, ww = (min(w, s) for w, s in zip(self.window_size, size, strict=True))
        else:  # timm: the full spatial window, padded tokens attended
            wt, (wh, ww) = min(self.window_size[0], T), self.window_size[1:]
        pt, ph, pw = (-T) % wt, (-H) % wh, (-W) % ww
        masked_space = self.padding == "masked" and (ph or pw)
        x = x.reshape(B, T, H, W, C)
        if pt or ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pt))  # (B, Tp, Hp, Wp, C)
        nt, nh, nw = (T + pt) // wt, (H + ph) // wh, (W + pw) // ww
        n_win, n = nt * nh * nw, wt * wh * ww
        # (B, Tp, Hp, Wp, C) -> (B, nt, wt, nh, wh, nw, ww, C) -> (B, nt, nh, nw, wt, wh, ww, C) -> (B * nW, n, C)
        x = x.reshape(B, nt, wt, nh, wh, nw, ww, C).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(B * n_win, n, C)
        qkv = self.qkv(x).reshape(B * n_win, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, h, n, d)
        mask = None
        if pt or masked_space:
            valid = torch.zeros(T + pt, H + ph, W + pw, dtype=torch.bool, device=x.device)
            if masked_space:
                valid[:T, :H, :W] = True
            else:
                valid[:T] = True
            # (Tp, Hp, Wp) -> (nW, n): which keys of each window are real tokens
            valid = valid.reshape(nt, wt, nh, wh, nw, ww).permute(0, 2, 4, 1, 3, 5).reshape(n_win, n)
            mask = valid[:, None, None, :].repeat(B, 1, 1, 1)  # (B * nW, 1, 1, n), True = attend
        x = attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, nt, nh, nw, wt, wh, ww, C)  # (B * nW, h, n, d) -> windows
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, T + pt, H + ph, W + pw, C)  # back to the padded grid
        if pt or ph or pw:
            x = x[:, :T, :H, :W]
        x = x.reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with GSA (``window_size=None``) or LSA attention, on tokens of a (T, H, W) grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: Sequence[int] = (1, 1, 1),
        window_size: Sequence[int] | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        temporal_padding: str = "zeros",
        lsa_padding: str = "masked",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if window_size is None:
            self.attn = GlobalSubSampleAttn3d(
                dim,
                num_heads=num_heads,
                sr_ratio=sr_ratio,
                attn_drop=attn_drop,
                proj_drop=drop,
                temporal_padding=temporal_padding,
            )
        else:
            self.attn = LocallyGroupedAttn3d(
                dim, num_heads=num_heads, window_size=window_size, attn_drop=attn_drop, proj_drop=drop,
                padding=lsa_padding,
            )  # fmt: skip
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, size: Size3) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _per_stage(value: int | Sequence, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * 4
    if len(values) != 4:
        raise ValueError(f"Twins: {name} needs 4 stages, got {value}")
    return values


_TIMM_PEG = re.compile(r"^pos_block\.(\d+)\.proj\.0\.")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Twins) -> tuple[dict, str]:
    """Convert timm Twins state dicts (2D, ``pos_block.i.proj.0.*``) to our names; ours pass through.

    2D kernels (patch embeddings, sub-sampling convs, PEGs) are inflated to 3D afterwards by the generic loader.
    """
    out, renamed = {}, False
    for key, value in state_dict.items():
        new = _TIMM_PEG.sub(r"pos_block.\1.proj.", key)
        renamed |= new != key
        out[new] = value
    is_2d = out.get("patch_embeds.0.proj.weight", torch.empty(0, 0, 0, 0, 0)).ndim == 4
    return out, "timm-twins" if renamed or is_2d else "twins"


_TIMM = "timm/models/twins.py (timm 1.0)"
FORMAT_NOTES: list[FormatNote] = [
    # timm: keys pos_block.i.proj.0., 2D kernels
    FormatNote("timm-twins", "LayerNorm eps (blocks, final)", "1e-6 (partial(nn.LayerNorm, eps=1e-6))", _TIMM),
    FormatNote("timm-twins", "LayerNorm eps (patch embeddings, GSA sub-sampling)", "1e-5 (nn.LayerNorm(dim))", _TIMM),
    FormatNote("timm-twins", "q / kv / qkv bias", "True", _TIMM),
    FormatNote("timm-twins", "GELU / attention scale", "exact / head_dim ** -0.5", _TIMM),
    FormatNote("timm-twins", "PEG", "x + DWConv3x3(x) after the first block of each stage", _TIMM),
    FormatNote("timm-twins", "head", "mean of the normalised tokens, Dropout(drop_rate=0), Linear", _TIMM),
    FormatNote(
        "timm-twins", "SVT windows on a grid they do not divide",
        "padded to the full window with zero tokens that every query attends to (F.pad before qkv, no mask); "
        "differs from ours only off 224-px-like grids", _TIMM, (("lsa_padding", "zeros"),),
    ),
    FormatNote(
        "twins", "every setting", "what the run used: a Lightning checkpoint's hyper_parameters.backbone_kwargs "
        "(lsa_padding re-applied); a plain state dict carries none", "videorec.lit.VideoClassifier",
    ),
]  # fmt: skip
"""Every Twins format's settings that change outputs without changing key names or shapes, with the source file.
``lsa_padding="masked"`` stays our default for models built without a timm checkpoint."""

FORMAT_SETTINGS: dict[str, dict[str, object]] = implied_settings(FORMAT_NOTES)
"""The settings of :data:`FORMAT_NOTES` that differ from our defaults, applied when the format is detected."""


class Twins(BackboneMixin, nn.Module):
    """Spatiotemporal Twins-PCPVT (``window_sizes=None``) or Twins-SVT (LSA windows per stage) with a linear head.

    Args:
        num_classes: classifier size (0 for a feature extractor).
        num_frames: frames per clip the model is built for (recorded; any count >= 1 runs).
        img_size: square input resolution the model is built for (a multiple of ``patch_size * 8``).
        in_chans: input channels.
        patch_size: spatial patch of stage 1 (later stages halve the resolution).
        temporal_patch: temporal size and stride of the stage-1 patch embedding.
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP hidden size over dim, per stage.
        depths: blocks per stage.
        sr_ratios: spatial (h and w) K/V reduction of GSA per stage.
        temporal_sr_ratios: temporal K/V reduction of GSA per stage.
        window_sizes: None for PCPVT; for SVT the LSA window per stage, an int (spatial, with ``temporal_window``
            frames) or a (t, h, w) tuple. Even blocks of a stage use LSA, odd blocks GSA.
        temporal_window: temporal extent of int ``window_sizes``.
        peg_kernel: (t, h, w) kernel of the depthwise PEG conv.
        temporal_padding: ``"zeros"`` (the PEG sees the clip's borders) or ``"replicate"`` (a static video gives
            exactly the image response). Either way a one-frame video equals the image model.
        lsa_padding: how SVT windows meet a grid they do not divide: ``"masked"`` (padded keys masked out) or
            ``"zeros"`` (timm's zero tokens, attended); see :class:`LocallyGroupedAttn3d`. timm checkpoints imply
            ``"zeros"`` (:data:`FORMAT_SETTINGS`).
        drop_rate: dropout after patch embeddings, in MLPs and after attention projections.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, growing linearly over all blocks.
        head_drop: dropout before the classifier.
        global_pool: how the features are pooled for the head: ``"avg"`` (published), ``"max"`` or
            ``"avgmax"`` (see :func:`~videorec.models.layers.global_pool_tokens`).
    """

    # "center": at initialisation every token frame is the image model's response to one input frame, whatever the
    # temporal padding (the pretrained features start intact; time mixing is learnt). "mean" (also exact on one
    # frame here) blurs tubelets, sub-sampling and PEGs over time and, with zero padding, dims the border frames.
    # ViViT's reference configs (scenic) likewise initialise tubelet embeddings from the central frame. Measured on the
    # embedded dataset by scripts/inflation_experiment.py (2D pre-training, then 6 fine-tuning epochs, 5 seeds):
    # "center" 45.6% +- 3.7 best top-1 on average and best in 3 seeds, "mean" 35.5% +- 15.9, random init 29.9%.
    default_inflate = "center"
    checkpoint_filter = staticmethod(checkpoint_filter_fn)
    format_settings = FORMAT_SETTINGS

    def apply_format_setting(self, name: str, value: str) -> None:
        """Apply a setting of ``format_settings`` to the built model."""
        if name != "lsa_padding":
            raise ValueError(f"Twins: no format setting {name!r} (known: lsa_padding)")
        if value not in LSA_PADDINGS:
            raise ValueError(f"Twins: lsa_padding must be one of {LSA_PADDINGS}, got {value!r}")
        self.lsa_padding = value
        for module in self.modules():
            if isinstance(module, LocallyGroupedAttn3d):
                module.padding = value

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 4,
        temporal_patch: int = 2,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        temporal_sr_ratios: Sequence[int] = (1, 1, 1, 1),
        window_sizes: Sequence[int | Sequence[int]] | None = None,
        temporal_window: int = 2,
        peg_kernel: int | Sequence[int] = 3,
        temporal_padding: str = "zeros",
        lsa_padding: str = "masked",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        embed_dims, num_heads = _per_stage(embed_dims, "embed_dims"), _per_stage(num_heads, "num_heads")
        mlp_ratios, depths = _per_stage(mlp_ratios, "mlp_ratios"), _per_stage(depths, "depths")
        sr_ratios, temporal_sr_ratios = (
            _per_stage(sr_ratios, "sr_ratios"),
            _per_stage(temporal_sr_ratios, "temporal_sr_ratios"),
        )
        if num_frames < 1:
            raise ValueError(f"Twins: num_frames must be >= 1, got {num_frames}")
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"Twins: temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
        if lsa_padding not in LSA_PADDINGS:
            raise ValueError(f"Twins: lsa_padding must be one of {LSA_PADDINGS}, got {lsa_padding!r}")
        self.lsa_padding = lsa_padding
        self.reduction = patch_size * 8
        if img_size % self.reduction:
            raise ValueError(
                f"Twins: img_size must be a multiple of {self.reduction} (patch {patch_size}, then three 2x stages), "
                f"got {img_size}"
            )
        for i, sr in enumerate(sr_ratios):
            if img_size // (patch_size * 2**i) < sr:
                raise ValueError(
                    f"Twins: img_size {img_size} gives a {img_size // (patch_size * 2**i)}-token grid in stage "
                    f"{i + 1}, smaller than its spatial reduction ratio {sr}"
                )
        windows = None
        if window_sizes is not None:
            windows = [
                (temporal_window, w, w) if isinstance(w, int) else to_3tuple(w)
                for w in _per_stage(window_sizes, "window_sizes")
            ]
        self.num_frames = num_frames
        self.img_size = img_size
        self.embed_dims = embed_dims
        self.depths = depths
        self.num_features = embed_dims[-1]

        self.patch_embeds = nn.ModuleList()
        self.pos_drops = nn.ModuleList()
        prev = in_chans
        for i in range(4):
            patch = (temporal_patch, patch_size, patch_size) if i == 0 else (1, 2, 2)
            self.patch_embeds.append(PatchEmbed(prev, embed_dims[i], patch, temporal_padding=temporal_padding))
            self.pos_drops.append(nn.Dropout(drop_rate))
            prev = embed_dims[i]

        dpr = drop_path_rates(drop_path_rate, depths)
        self.blocks = nn.ModuleList()
        cur = 0
        for i in range(4):
            self.blocks.append(
                nn.ModuleList(
                    Block(
                        embed_dims[i],
                        num_heads=num_heads[i],
                        mlp_ratio=mlp_ratios[i],
                        sr_ratio=(temporal_sr_ratios[i], sr_ratios[i], sr_ratios[i]),
                        window_size=windows[i] if windows is not None and j % 2 == 0 else None,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[cur + j],
                        temporal_padding=temporal_padding,
                        lsa_padding=lsa_padding,
                    )
                    for j in range(depths[i])
                )
            )
            cur += depths[i]
        self.pos_block = nn.ModuleList(
            PosConv3d(d, kernel_size=peg_kernel, temporal_padding=temporal_padding) for d in embed_dims
        )
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.global_pool = check_global_pool("Twins", global_pool)
        self.init_head(num_classes, head_drop)
        self.apply(init_weights)

    # --- timm-style uniform API ---
    def no_weight_decay(self) -> set[str]:
        """Names (beyond 1-D tensors) excluded from weight decay: the PEG convs."""
        return {n for n, _ in self.named_parameters() if n.startswith("pos_block.")}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) or (B, C, H, W) -> normalised features (B, C', T', H/32, W/32)."""
        x = as_video(x)
        B = x.shape[0]
        if x.shape[-1] % self.reduction or x.shape[-2] % self.reduction:
            raise ValueError(
                f"Twins: input height and width must be multiples of {self.reduction}, got {tuple(x.shape[-2:])}"
            )
        ckpt = self.grad_checkpointing and self.training
        for i, (embed, drop, blocks, peg) in enumerate(
            zip(self.patch_embeds, self.pos_drops, self.blocks, self.pos_block, strict=True)
        ):
            x, size = embed(x)  # (B, N, C)
            x = checkpoint_seq(blocks[:1], drop(x), size, enabled=ckpt)
            if len(blocks):
                x = peg(x, size)  # the PEG follows the first block of a stage
            x = checkpoint_seq(blocks[1:], x, size, enabled=ckpt)
            if i < 3:
                x = x.transpose(1, 2).reshape(B, -1, *size)  # (B, N, C) -> (B, C, T, H, W)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(B, -1, *size)  # (B, N, C) -> (B, C, T, H, W)


def _create(variant: str, defaults: dict, overrides: dict) -> Twins:
    return build_variant(Twins, variant, defaults, overrides)


_PCPVT_S = dict(
    embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 6, 3),
    sr_ratios=(8, 4, 2, 1),
)  # fmt: skip
_SVT_S = dict(
    embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 10, 4),
    sr_ratios=(8, 4, 2, 1), window_sizes=(7, 7, 7, 7),
)  # fmt: skip


@register_model
def twins_pcpvt_s(**kwargs) -> Twins:
    """Twins-PCPVT-S in space-time: 24.1M params (image), global sub-sampled attention in every block."""
    return _create("twins_pcpvt_s", _PCPVT_S, kwargs)


@register_model
def twins_svt_s(**kwargs) -> Twins:
    """Twins-SVT-S in space-time: 24.1M params (image), LSA in (2, 7, 7) windows alternating with GSA."""
    return _create("twins_svt_s", _SVT_S, kwargs)


@register_model
def twins_pcpvt_tiny(**kwargs) -> Twins:
    """A small PCPVT for tests and the embedded-dataset demo (8 frames, 64 px, CPU-friendly)."""
    defaults = dict(
        embed_dims=(32, 64, 128, 128), num_heads=(1, 2, 4, 4), mlp_ratios=(4, 4, 4, 4), depths=(1, 1, 2, 1),
        sr_ratios=(8, 4, 2, 1), num_frames=8, img_size=64, num_classes=8,
    )  # fmt: skip
    return _create("twins_pcpvt_tiny", defaults, kwargs)


@register_model
def twins_svt_tiny(**kwargs) -> Twins:
    """A small SVT for tests and the embedded-dataset demo (8 frames, 64 px, (2, 4, 4) windows, CPU-friendly)."""
    defaults = dict(
        embed_dims=(32, 64, 128, 128), num_heads=(1, 2, 4, 4), mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 2, 2),
        sr_ratios=(8, 4, 2, 1), window_sizes=(4, 4, 4, 4), num_frames=8, img_size=64, num_classes=8,
    )  # fmt: skip
    return _create("twins_svt_tiny", defaults, kwargs)
