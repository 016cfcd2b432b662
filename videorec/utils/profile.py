"""Parameter and FLOP counting with the conventions of REFERENCES.md (one multiply-add = one FLOP)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gflops"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(model: nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOPs of one forward pass, as ``FlopCounterMode`` total / 2 / 1e9 (multiply-adds, like fvcore and papers).

    Unlike fvcore this counts ``scaled_dot_product_attention``.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
