"""Layers shared by every family: the one attention core, MLPs, DropPath, 3D patch embeddings, position encodings.

Every softmax attention in the zoo calls :func:`attention`, which runs ``F.scaled_dot_product_attention`` (the
fused path) or an explicit softmax reference. ``VIDEOREC_FUSED_ATTN=0`` in the environment forces the reference
path everywhere; tests compare the two.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint

if TYPE_CHECKING:
    from .checkpoints import CheckpointFilter

__all__ = [
    "use_fused_attn",
    "attention",
    "Attention",
    "Mlp",
    "DropPath",
    "drop_path_rates",
    "channels_last_weights",
    "match_grad_layouts",
    "PatchEmbed3d",
    "DepthwisePosEmbed3d",
    "to_3tuple",
    "as_video",
    "init_weights",
    "BackboneMixin",
    "checkpoint_seq",
    "GLOBAL_POOLS",
    "check_global_pool",
    "global_pool_tokens",
]


def use_fused_attn() -> bool:
    """Whether attention runs through ``F.scaled_dot_product_attention`` (env ``VIDEOREC_FUSED_ATTN``, default 1)."""
    return os.environ.get("VIDEOREC_FUSED_ATTN", "1").lower() not in ("0", "false", "no")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Softmax attention, the single core of the zoo.

    Args:
        q: (B, h, Nq, d)
        k: (B, h, Nk, d)
        v: (B, h, Nk, dv)
        attn_mask: additive float bias broadcastable to (B, h, Nq, Nk), or a boolean mask (True = attend).
        dropout_p: attention dropout; pass 0 at eval.
        scale: defaults to d ** -0.5.
        fused: force the fused (True) or the reference (False) path; None follows :func:`use_fused_attn`.

    Returns:
        (B, h, Nq, dv)
    """
    if fused is None:
        fused = use_fused_attn()
    if fused:
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, h, Nq, Nk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence (B, N, C) with a fused qkv projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        # (B, N, 3 * h * d) -> (3, B, h, N, d)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, -1)  # (B, h, N, d) -> (B, N, h * d)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Two linear layers with an activation between them, on (..., C); with ``use_conv`` they are 1x1x1
    convolutions on (B, C, T, H, W). Either way the layers are named ``fc1`` and ``fc2``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        use_conv: bool = False,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        linear = partial(nn.Conv3d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
        return x * mask  # one full-size multiply

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def drop_path_rates(rate: float, depths: Sequence[int] | int) -> list[float]:
    """Drop-path rates growing linearly from 0 to ``rate`` over all blocks (a flat list)."""
    total = depths if isinstance(depths, int) else sum(depths)
    if total <= 1:
        return [0.0] * total
    return [rate * i / (total - 1) for i in range(total)]


def to_3tuple(x: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(x, int):
        return (x, x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 3:
        raise ValueError(f"expected an int or 3 values, got {x}")
    return x  # type: ignore[return-value]


def as_video(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images become one-frame videos (B, C, 1, H, W); videos pass through."""
    if x.ndim == 4:
        return x.unsqueeze(2)
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, T, H, W) video or (B, C, H, W) images, got shape {tuple(x.shape)}")
    return x


class PatchEmbed3d(nn.Module):
    """Conv3d patchify, optionally followed by a LayerNorm over channels. Returns (B, C, T', H', W')."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        norm: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        kernel_size = to_3tuple(kernel_size)
        stride = kernel_size if stride is None else to_3tuple(stride)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size, stride=stride, padding=to_3tuple(padding))
        self.norm = nn.LayerNorm(embed_dim, eps=eps) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, T', H', W')
        if isinstance(self.norm, nn.Identity):
            return x
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class DepthwisePosEmbed3d(nn.Module):
    """Conditional position encoding ``x + DWConv3d(x)`` (UniFormer's DPE, Twins' PEG) on (B, C, T, H, W)."""

    def __init__(self, dim: int, kernel_size: int | Sequence[int] = 3) -> None:
        super().__init__()
        kernel_size = to_3tuple(kernel_size)
        self.proj = nn.Conv3d(dim, dim, kernel_size, padding=tuple(k // 2 for k in kernel_size), groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


def channels_last_weights(module: nn.Module) -> nn.Module:
    """Store every 5-D (Conv3d) weight in the channels-last-3d layout, for channels-last training."""
    for param in module.parameters():
        if param.ndim == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def match_grad_layouts(module: nn.Module, step: Callable[[], torch.Tensor]) -> list[str]:
    """Give each parameter the strides its gradient comes back with, found by running ``step`` (a loss) once.

    A weight with size-1 dims, such as a depthwise (C, 1, k, k, k) or a pointwise (O, I, 1, 1, 1) kernel, has several
    valid stride sets for one memory order, and the convolution backward may return its gradient with another set than
    the weight's (which one depends on the kernel and on the input's layout). Autograd accepts that, but DDP then warns
    "Grad strides do not match bucket view strides" and copies those gradients into its buckets on every step. Setting
    such a weight's strides to its gradient's (the same values in the same memory order) removes the mismatch. The
    module's buffers (BatchNorm statistics), the RNG and the gradients are left as they were. Returns the names of the
    parameters that changed.
    """
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        step().backward()
    changed = []
    for name, param in module.named_parameters():
        grad = param.grad
        dense = grad is not None and (
            grad.is_contiguous() or (grad.ndim == 5 and grad.is_contiguous(memory_format=torch.channels_last_3d))
        )
        if dense and grad.stride() != param.stride():
            data = torch.empty_strided(param.shape, grad.stride(), dtype=param.dtype, device=param.device)
            param.data = data.copy_(param.data)
            changed.append(name)
        param.grad = None
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(buffers[name])
    return changed


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """timm-style init: truncated normal linear weights, zero biases, unit norms, fan-out convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm3d, nn.BatchNorm2d, nn.GroupNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d | nn.Conv2d):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


GLOBAL_POOLS = ("avg", "max", "avgmax")


def check_global_pool(family: str, global_pool: str) -> str:
    """Validate a ``global_pool`` argument (see :func:`global_pool_tokens`) and return it."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{family}: global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    return global_pool


def global_pool_tokens(x: torch.Tensor, global_pool: str = "avg") -> torch.Tensor:
    """Pool (B, C, T', H', W') features over all positions to (B, C).

    ``"avg"`` is the mean (every family's published head), ``"max"`` the maximum and ``"avgmax"`` the mean of the two,
    as timm's ``global_pool`` options of the same names. Max pooling keeps a response that only a few positions have
    (a small moving object in a static scene), which the mean dilutes by the number of positions.
    """
    x = x.flatten(2)
    if global_pool == "avg":
        return x.mean(-1)
    if global_pool == "max":
        return x.amax(-1)
    if global_pool == "avgmax":
        return 0.5 * (x.mean(-1) + x.amax(-1))
    raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")


def checkpoint_seq(blocks: Iterable[nn.Module], x: torch.Tensor, *args, enabled: bool = False, carry: bool = False):
    """Run ``blocks`` in order, ``x = blk(x, *args)``, each call through activation checkpointing when ``enabled``.

    With checkpointing a block's activations are recomputed in the backward pass instead of being kept
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``); the result and the gradients are the same.
    Callers pass ``enabled=self.grad_checkpointing and self.training``.

    Args:
        blocks: the blocks.
        x: the input of the first block.
        *args: further arguments of every block (a token grid, for instance).
        enabled: checkpoint every call (ignored while TorchScript compiles).
        carry: every block returns ``(x, *args)``, the inputs of the next one (a block that changes the token grid);
            the function then returns that tuple of the last block.
    """
    enabled = enabled and not torch.jit.is_scripting()
    for blk in blocks:
        out = torch_checkpoint.checkpoint(blk, x, *args, use_reentrant=False) if enabled else blk(x, *args)
        if carry:
            x, *args = out
        else:
            x = out
    return (x, *args) if carry else x


class BackboneMixin:
    """The uniform model API shared by every family (timm-style), for models with a linear ``head``.

    The model sets ``num_features`` and ``global_pool``, builds its classifier with :meth:`init_head` and implements
    ``forward_features`` returning (B, C, T', H', W') features; families with other features override
    :meth:`forward_head`. Blocks run through :func:`checkpoint_seq` with ``enabled=self.grad_checkpointing and
    self.training``.

    Class attributes read by :func:`videorec.models.checkpoints.load_pretrained`: ``classifier_keys`` (the state-dict
    prefixes of the classifier, dropped when a checkpoint's has another size), ``default_inflate`` (the 2D -> 3D kernel
    inflation) and ``checkpoint_filter`` (the family's converter, a
    :data:`~videorec.models.checkpoints.CheckpointFilter`; None loads state dicts as they are).
    """

    global_pool: str = "avg"
    grad_checkpointing: bool = False
    classifier_keys: ClassVar[tuple[str, ...]] = ("head.",)
    default_inflate: ClassVar[str] = "mean"
    checkpoint_filter: ClassVar[CheckpointFilter | None] = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch activation checkpointing on the model and on every submodule with its own ``grad_checkpointing``."""
        for m in self.modules():  # the model first
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def init_head(self, num_classes: int, head_drop: float = 0.0) -> None:
        """Build the classifier on ``num_features``: dropout, then a linear layer (none when ``num_classes`` is 0)."""
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(head_drop)
        self.head = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool_tokens(x, self.global_pool)  # over T'H'W' -> (B, C')
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
