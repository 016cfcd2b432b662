"""Time and peak memory of the linear attentions (VVT vicinity, XFormer XFA) against softmax attention, vs tokens N.

Usage::

    python scripts/bench_linear_attention.py                     # CPU, N = 1024 .. 65536
    python scripts/bench_linear_attention.py --tokens 4096 16384 --dim 128 --device cuda

Peak memory on CPU is measured by ``videorec.utils.profile.PeakMemoryMeter``, a ``TorchDispatchMode`` that follows
every tensor storage created by an aten op during the forward pass (by reference counting the tensors that share it)
and records the peak of the bytes alive at once, plus the largest intermediate tensor. It counts what the operators
allocate, not the allocator's slack, so the numbers are deterministic. On CUDA, ``torch.cuda.max_memory_allocated``
is used instead. Softmax attention runs through the shared core (``videorec.models.layers.Attention``):
``softmax-ref`` is its explicit reference path (which builds the N x N map, limited to ``--max-ref-tokens``),
``softmax-fused`` is ``F.scaled_dot_product_attention`` (whose kernels may tile the map internally, invisible to the
meter on CPU).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from videorec.models.layers import Attention
from videorec.models.vvt import VicinityAttention
from videorec.models.xformer import CrossFeatureAttention
from videorec.utils.profile import PeakMemoryMeter, measure_peak

__all__ = ["PeakMemoryMeter", "measure_peak", "build_modules", "main"]


def _grid(n: int) -> tuple[int, int, int]:
    """A (T, H, W) token grid of n tokens with 4 frames (n a multiple of 4 and 4 x a square)."""
    side = int(round((n // 4) ** 0.5))
    if 4 * side * side != n:
        raise ValueError(f"--tokens must be 4 x a square (e.g. 1024, 4096, 16384), got {n}")
    return (4, side, side)


def build_modules(
    dim: int, heads: int
) -> dict[str, tuple[nn.Module, Callable[[nn.Module, torch.Tensor], torch.Tensor]]]:
    """The attention modules under test, each with a call taking (module, tokens (1, N, C))."""
    vvt = VicinityAttention(dim, num_heads=heads)
    xfa = CrossFeatureAttention(dim, qkv_dim=dim, num_heads=heads)
    softmax = Attention(dim, num_heads=heads)

    def call_ref(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from videorec.models import layers

        B, N, _ = x.shape
        qkv = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
        y = layers.attention(*qkv.unbind(0), fused=False)
        return m.proj(y.transpose(1, 2).reshape(B, N, -1))

    return {
        "vvt": (vvt, lambda m, x: m(x, _grid(x.shape[1]))),
        "xfa": (xfa, lambda m, x: m(x)),
        "softmax-fused": (softmax, lambda m, x: m(x)),
        "softmax-ref": (softmax, call_ref),
    }


def _time(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    with torch.no_grad():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-ref-tokens", type=int, default=4096, help="largest N for the N x N reference path")
    parser.add_argument("--max-fused-tokens", type=int, default=16384)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    modules = build_modules(args.dim, args.heads)
    print(f"device={device} dim={args.dim} heads={args.heads} batch=1 (time: median of {args.repeats}, forward only)")
    print(f"{'module':<14} {'N':>7} {'time ms':>10} {'peak MiB':>10} {'largest tensor':>22}")
    for name, (module, call) in modules.items():
        module.to(device).eval()
        for n in args.tokens:
            if (name == "softmax-ref" and n > args.max_ref_tokens) or (
                name == "softmax-fused" and n > args.max_fused_tokens
            ):
                print(f"{name:<14} {n:>7} {'skipped (N x N too large)':>45}")
                continue
            x = torch.randn(1, n, args.dim, device=device)
            fn = functools.partial(call, module, x)
            seconds = _time(fn, device, args.repeats)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                with torch.no_grad():
                    fn()
                peak, largest = torch.cuda.max_memory_allocated() - base, "-"
            else:
                meter = measure_peak(fn, x, *module.parameters())
                peak, largest = meter.peak, str(meter.max_shape)
            print(f"{name:<14} {n:>7} {seconds * 1e3:>10.2f} {peak / 2**20:>10.2f} {largest:>22}")


if __name__ == "__main__":
    main()
