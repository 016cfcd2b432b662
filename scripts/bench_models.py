"""Benchmark registered models against the reference implementations we can install.

For every chosen model (``--models`` takes shell globs, comma or space separated) and for each reference
implementation registered for it in ``videorec.models.references.REFERENCES``, this measures, on the same run and at
the same input:

* parameters and GFLOPs per clip (``FlopCounterMode`` / 2, counted on the meta device, batch 1);
* forward time (eval mode, ``torch.inference_mode``) and forward+backward time (train mode, sum of the logits as the
  loss), as the median and the minimum over ``--iters`` rounds. Rounds are interleaved (ours, reference, ours, ...),
  so load from other processes hits every model alike;
* peak memory of one forward+backward step. CUDA: ``torch.cuda.max_memory_allocated`` above the memory held before
  the step. CPU: the peak of live tensor bytes allocated during the step, rebuilt in time order from the per-op
  allocation / free records of ``torch.profiler`` (``profile_memory=True``); parameters that already exist are not
  counted, gradients are. (Process RSS is no measure here: the allocator caches and other work shares the process.)

It then prints the ratios reference / ours (above 1: ours is faster or smaller). bf16 runs under ``torch.autocast``.

Other families add their reference builders to ``REFERENCES`` there: ``{registry_name: {label: builder}}`` where
``builder(num_frames, img_size, num_classes) -> nn.Module``.

Examples::

    python scripts/bench_models.py --models mvit_b --batch 2 --frames 8 --size 112
    python scripts/bench_models.py --models "mvit*,uniformer_s" --device cuda --dtype bf16 --json out.json
    python scripts/bench_models.py --models "vvt_tiny,xformer_tiny,uniformer_tiny" --scaling 64,128,256

``--scaling`` measures how time grows with the number of tokens instead: each model runs at every listed image side
(tokens grow with the square of the side), and the table gives the forward and forward+backward times, their growth
over the smallest side, and the exponent ``log(time growth) / log(token growth)``: about 1 for a model whose cost is
linear in tokens, towards 2 where an N x N attention dominates.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from videorec.models import create_model, list_models  # noqa: E402
from videorec.models.references import REFERENCES  # noqa: E402
from videorec.utils.profile import count_gflops, count_params  # noqa: E402

# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    model.eval()
    _sync(x.device)
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(x.device, dtype):
        model(x)
    _sync(x.device)
    return time.perf_counter() - start


def _train_step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> None:
    model.train()
    with _autocast(x.device, dtype):
        out = model(x)
    out.float().sum().backward()


def _forward_backward(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> float:
    model.zero_grad(set_to_none=True)
    _sync(x.device)
    start = time.perf_counter()
    _train_step(model, x, dtype)
    _sync(x.device)
    return time.perf_counter() - start


def peak_memory_bytes(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> int:
    """Peak bytes allocated above the starting point during one forward+backward step (see the module docstring)."""
    model.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        _sync(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        _train_step(model, x, dtype)
        _sync(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _train_step(model, x, dtype)
    # each op event carries what it allocated minus what it freed itself; "[memory]" events carry the allocations
    # and frees that happen outside any op (e.g. autograd releasing saved tensors)
    deltas = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
    )
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def gflops_per_clip(model: nn.Module, num_frames: int, img_size: int, in_chans: int = 3) -> float:
    """GFLOPs of one clip, counted on a meta-device copy (no compute, no memory)."""
    meta = copy.deepcopy(model).to("meta")
    return count_gflops(meta, torch.empty(1, in_chans, num_frames, img_size, img_size, device="meta"))


def time_interleaved(
    runs: dict, dtype: torch.dtype, iters: int, warmup: int
) -> tuple[dict[object, list[float]], dict[object, list[float]]]:
    """Forward and forward+backward seconds of every ``{key: (model, input)}``, rounds interleaved across the keys
    (so load from other processes hits them alike), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for model, x in runs.values():
            _forward(model, x, dtype)
            _forward_backward(model, x, dtype)
    fwd: dict[object, list[float]] = {k: [] for k in runs}
    fwb: dict[object, list[float]] = {k: [] for k in runs}
    for _ in range(iters):
        for key, (model, x) in runs.items():
            fwd[key].append(_forward(model, x, dtype))
        for key, (model, x) in runs.items():
            fwb[key].append(_forward_backward(model, x, dtype))
    return fwd, fwb


def bench_group(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    dtype: torch.dtype,
    iters: int,
    warmup: int,
    num_frames: int,
    img_size: int,
) -> dict[str, dict]:
    """Measure a group of models on the same input; timing rounds are interleaved across the group."""
    results: dict[str, dict] = {}
    for label, model in models.items():
        results[label] = {"params_m": count_params(model) / 1e6}
        try:
            results[label]["gflops"] = gflops_per_clip(model, num_frames, img_size, x.shape[1])
        except Exception as e:  # a reference that cannot run on the meta device
            print(f"  [{label}] GFLOPs on meta failed ({type(e).__name__}: {e}); counting on the real device")
            results[label]["gflops"] = count_gflops(model, x[:1])
    fwd, fwb = time_interleaved({label: (model, x) for label, model in models.items()}, dtype, iters, warmup)
    for label, model in models.items():
        r = results[label]
        r["fwd_ms"] = 1e3 * statistics.median(fwd[label])
        r["fwd_min_ms"] = 1e3 * min(fwd[label])
        r["fwd_bwd_ms"] = 1e3 * statistics.median(fwb[label])
        r["fwd_bwd_min_ms"] = 1e3 * min(fwb[label])
        r["peak_mem_mb"] = peak_memory_bytes(model, x, dtype) / 2**20
        model.zero_grad(set_to_none=True)
    return results


def bench_scaling(names: list[str], sizes: list[int], args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Time every model at every image side (``args.frames`` frames, batch ``args.batch``); rounds are interleaved
    over the sides."""
    frames, batch = args.frames, args.batch
    rows: list[dict] = []
    for name in names:
        runs = {}
        for size in sizes:
            try:
                model = create_model(name, num_classes=args.num_classes, num_frames=frames, img_size=size)
            except (ValueError, TypeError) as e:
                print(f"{name} at {size}: skipped ({e})")
                continue
            runs[size] = (model.to(device), torch.randn(batch, 3, frames, size, size, device=device))
        if len(runs) < 2:
            continue
        fwd, fwb = time_interleaved(runs, dtype, args.iters, args.warmup)
        base = min(runs)
        print(f"\n{name}  ({frames} frames, batch {batch}; exponent 1: linear in tokens, 2: quadratic)")
        header = f"{'fwd ms':>10}{'growth':>8}{'exp':>6}  {'fwd+bwd ms':>10}{'growth':>8}{'exp':>6}"
        print(f"  {'side':>6}{'tokens x':>10}{header}")
        for size in runs:
            tokens = (size / base) ** 2
            row = {"model": name, "size": size, "token_growth": tokens}
            cells = []
            for key, times in (("fwd", fwd), ("fwd_bwd", fwb)):
                ms = 1e3 * statistics.median(times[size])
                growth = ms / (1e3 * statistics.median(times[base]))
                exponent = math.log(growth) / math.log(tokens) if tokens > 1 else float("nan")
                row |= {f"{key}_ms": ms, f"{key}_growth": growth, f"{key}_exponent": exponent}
                cells.append(f"{ms:>10.1f}{growth:>8.2f}{exponent:>6.2f}" if tokens > 1 else f"{ms:>10.1f}{'':>14}")
            print(f"  {size:>6}{tokens:>10.0f}{cells[0]}  {cells[1]}")
            rows.append(row)
        del runs
    return rows


def bench_with_references(names: list[str], args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Time every model next to its reference implementations on one input, and print the ratios."""
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    rows: list[dict] = []
    for name in names:
        group: dict[str, nn.Module] = {}
        try:
            group[name] = create_model(
                name, num_classes=args.num_classes, num_frames=args.frames, img_size=args.size
            ).to(device)
        except (ValueError, TypeError) as e:
            print(f"{name}: skipped ({e})")
            continue
        if not args.no_reference:
            for label, build in REFERENCES.get(name, {}).items():
                if fnmatch.fnmatch(label, args.references):
                    group[label] = build(args.frames, args.size, args.num_classes).to(device)
        results = bench_group(group, x, dtype, args.iters, args.warmup, args.frames, args.size)
        print(f"\n{name}")
        print(f"  {'model':<26}{'params(M)':>10}{'GFLOPs':>9}{'fwd ms':>16}{'fwd+bwd ms':>18}{'peak MB':>10}")
        for label, r in results.items():
            print(
                f"  {label:<26}{r['params_m']:>10.2f}{r['gflops']:>9.2f}"
                f"{r['fwd_ms']:>9.1f} /{r['fwd_min_ms']:>6.1f}{r['fwd_bwd_ms']:>10.1f} /{r['fwd_bwd_min_ms']:>6.1f}"
                f"{r['peak_mem_mb']:>10.1f}"
            )
            rows.append({"model": name, "impl": label, **r})
        ours = results[name]
        for label, r in results.items():
            if label == name:
                continue
            print(
                f"  ratio {label} / {name}: fwd x{r['fwd_ms'] / ours['fwd_ms']:.2f} "
                f"(min x{r['fwd_min_ms'] / ours['fwd_min_ms']:.2f}), "
                f"fwd+bwd x{r['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f} "
                f"(min x{r['fwd_bwd_min_ms'] / ours['fwd_bwd_min_ms']:.2f}), "
                f"peak memory x{r['peak_mem_mb'] / max(ours['peak_mem_mb'], 1e-9):.2f}  (>1: ours faster / smaller)"
            )
        del group
    return rows


def _select(patterns: list[str]) -> list[str]:
    names: list[str] = []
    for pattern in patterns:
        found = list_models(pattern)
        if not found:
            raise SystemExit(f"no registered model matches {pattern!r}; known: {', '.join(list_models())}")
        names += [n for n in found if n not in names]
    return names


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["*"], help="registry names or globs (comma or space separated)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="bf16/fp16 use autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference implementations")
    parser.add_argument("--references", default="*", help="glob on reference labels, e.g. 'torchvision*'")
    parser.add_argument("--json", type=Path, default=None, help="write all results to this file")
    parser.add_argument("--scaling", default=None, help="image sides, e.g. 64,128,256: time growth with tokens instead")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    patterns = [p for item in args.models for p in item.split(",") if p]
    names = _select(patterns)
    shape = f"{args.frames}x({args.scaling})^2" if args.scaling else f"{args.frames}x{args.size}x{args.size}"
    print(
        f"device={device} dtype={args.dtype} batch={args.batch} input={shape} "
        f"threads={torch.get_num_threads()} iters={args.iters} (times: median / min over interleaved rounds)"
    )
    torch.manual_seed(0)
    config = dict(device=str(device), dtype=args.dtype, batch=args.batch, frames=args.frames, size=args.size)
    if args.scaling:
        config["size"] = sorted(int(v) for v in args.scaling.split(",") if v)
        rows = bench_scaling(names, config["size"], args, device, dtype)
    else:
        rows = bench_with_references(names, args, device, dtype)
    if args.json:
        args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
