"""Parameter and FLOP counting with the papers' convention (one multiply-add = one FLOP, as fvcore counts), and a
deterministic peak-memory meter for CPU forward passes."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["count_params", "count_gflops", "flop_counter", "PeakMemoryMeter", "measure_peak", "time_training_steps"]


def _cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# PyTorch's counter knows the CUDA attention kernels but not the CPU one that SDPA dispatches to on this device, which
# it would count as zero: the same formulas serve it.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def flop_counter(**kwargs) -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts the CPU attention kernel (its totals are FLOPs, 2 per multiply-add)."""
    return FlopCounterMode(custom_mapping={**_CPU_SDPA_FLOPS, **kwargs.pop("custom_mapping", {})}, **kwargs)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(model: nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOPs of one forward pass, as ``FlopCounterMode`` total / 2 / 1e9 (multiply-adds, like fvcore and papers).

    Unlike fvcore this counts ``scaled_dot_product_attention``.
    """
    was_training = model.training
    model.eval()
    counter = flop_counter(display=False)
    with counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


class PeakMemoryMeter(TorchDispatchMode):
    """Peak bytes of the tensor storages created by aten ops while the mode is active.

    Storages of tensors passed to :meth:`ignore` (inputs, parameters) are not counted. ``max_numel`` and
    ``max_shape`` give the largest intermediate tensor; ``shapes`` lists every output shape in op order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [nbytes, tensors referencing it]
        self.external: set[int] = set()
        self.current = 0
        self.peak = 0
        self.max_numel = 0
        self.max_shape: tuple[int, ...] = ()
        self.shapes: list[tuple[int, ...]] = []

    def ignore(self, *tensors: torch.Tensor) -> PeakMemoryMeter:
        for t in tensors:
            self.external.add(t.untyped_storage().data_ptr())
        return self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        self.shapes.append(tuple(t.shape))
        if t.numel() > self.max_numel:
            self.max_numel, self.max_shape = t.numel(), tuple(t.shape)
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self.external:
            return
        entry = self.live.get(ptr)
        if entry is None:
            entry = self.live[ptr] = [nbytes, 0]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[ptr]
            self.current -= entry[0]


@torch.no_grad()
def measure_peak(fn: Callable[[], torch.Tensor], *ignore: torch.Tensor) -> PeakMemoryMeter:
    """Run ``fn()`` under a :class:`PeakMemoryMeter` (inputs and parameters in ``ignore`` are not counted)."""
    meter = PeakMemoryMeter().ignore(*ignore)
    with meter:
        out = fn()
    del out
    return meter


def time_training_steps(model: nn.Module, video: torch.Tensor, steps: int, warmup: int) -> float:
    """Seconds per training step (forward, cross-entropy, backward, AdamW) of ``model`` on ``video`` with random labels,
    in bf16 autocast on a GPU, after ``warmup`` untimed steps. On CUDA the peak-memory counter is reset after the
    warm-up, so ``torch.cuda.max_memory_allocated`` afterwards is the timed steps' peak."""
    import time

    import torch.nn.functional as F

    device = video.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    label = torch.randint(0, model.num_classes, (video.shape[0],), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(video), label)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps
