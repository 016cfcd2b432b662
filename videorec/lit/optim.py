"""Optimiser parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = [
    "param_groups_weight_decay",
    "layer_ids",
    "apply_layer_decay",
    "warmup_cosine_lambda",
    "NO_DECAY_NAME_PARTS",
]

# Parameters whose name contains one of these never get weight decay (position embeddings and tokens).
NO_DECAY_NAME_PARTS = ("pos_embed", "cls_token", "rel_pos", "temperature")


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and norms / biases / position embeddings without decay.

    A parameter is excluded from decay when it is 1-D (norm scales and all biases), when its name contains one of
    :data:`NO_DECAY_NAME_PARTS`, or when the model lists it in ``no_weight_decay()`` (names relative to ``model`` or to
    a ``backbone`` child).
    """
    skip: set[str] = set()
    for prefix, module in (("", model), ("backbone.", getattr(model, "backbone", None))):
        if module is not None and hasattr(module, "no_weight_decay"):
            skip |= {prefix + n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in skip or any(part in name for part in NO_DECAY_NAME_PARTS):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of every parameter for layer-wise learning-rate decay, and the number of depths.

    The blocks of a backbone (its modules whose class name ends in ``Block``, in the order they are registered) are
    depths 1..N; what comes before the first block (patch and position embeddings) is depth 0, what comes after the
    last (final norm, head) is depth N + 1, as BEiT, VideoMAE and timm number them, and what is registered between two
    blocks (a stage's downsampling) takes the depth of the block before it.
    """
    blocks = [name for name, m in model.named_modules() if type(m).__name__.endswith("Block")]
    blocks = [b for b in blocks if not any(b.startswith(f"{outer}.") for outer in blocks)]  # outermost blocks only
    order = {name: i + 1 for i, name in enumerate(blocks)}
    names = [name for name, _ in model.named_parameters()]
    owners = [next((order[b] for b in blocks if name.startswith(f"{b}.")), None) for name in names]
    ids, previous = {}, 0
    for i, (name, owner) in enumerate(zip(names, owners, strict=True)):
        if owner is not None:
            previous = owner
        elif any(o is not None for o in owners[i + 1 :]):
            owner = previous
        else:
            owner = len(blocks) + 1
        ids[name] = owner
    return ids, len(blocks) + 2


def apply_layer_decay(model: nn.Module, groups: list[dict], lr: float, layer_decay: float) -> list[dict]:
    """Split each parameter group by depth, with ``lr * layer_decay ** (depths - 1 - depth)`` per group: the head
    keeps ``lr`` and every block below gets ``layer_decay`` times the learning rate of the block above it."""
    ids, depths = layer_ids(model)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in groups:
        by_depth: dict[int, list] = {}
        for param in group["params"]:
            by_depth.setdefault(ids[names[id(param)]], []).append(param)
        for depth, params in sorted(by_depth.items()):
            scale = layer_decay ** (depths - 1 - depth)
            out.append({**group, "params": params, "lr": lr * scale, "lr_scale": scale, "layer": depth})
    return out


def warmup_cosine_lambda(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0):
    """LambdaLR factor: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_lr_ratio``."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(params: list[dict], name: str, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=betas[0], nesterov=True)
    raise ValueError(f"module.optimizer: unknown optimizer {name!r}; use 'adamw' or 'sgd'")
