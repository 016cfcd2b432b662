"""Training speed of the published models: clips/s, peak memory and MFU, with and without torch.compile and
activation checkpointing.

One training step is a forward pass, the cross-entropy loss, the backward pass and an AdamW step on random clips, in
bf16 autocast on a GPU (fp32 on CPU). MFU is the model's training FLOPs (three forward passes per clip, counted with
the project's FLOP counter) times clips/s, over the device's peak bf16 throughput (Lightning's table of devices, or
``--peak-tflops``).

    python scripts/bench_train.py                                  # mvit_b and uniformer_s, 16x224, on the GPU
    python scripts/bench_train.py --models uniformer_s --batch 16 --json out.json
    python scripts/bench_train.py --device cpu --models uniformer_tiny --frames 8 --size 64 --batch 2 --steps 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videorec.models import create_model  # noqa: E402
from videorec.models.layers import channels_last_weights  # noqa: E402
from videorec.utils.profile import flop_counter, time_training_steps  # noqa: E402


def forward_flops(name: str, frames: int, size: int) -> float:
    """FLOPs (2 per multiply-add) of one clip's forward pass, counted on the meta device."""
    with torch.device("meta"):
        model = create_model(name, num_classes=400, num_frames=frames, img_size=size).eval()
        clip = torch.zeros(1, 3, frames, size, size)
    with torch.no_grad(), flop_counter(display=False) as counter:
        model(clip)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, torch.bfloat16)


def run(
    name: str, compile_: bool, checkpointing: bool, args: argparse.Namespace, device: torch.device
) -> dict[str, float | str | bool]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=400, num_frames=args.frames, img_size=args.size, drop_path_rate=0.1)
    model.set_grad_checkpointing(checkpointing)
    channels_last = args.channels_last and device.type == "cuda"
    if channels_last:
        channels_last_weights(model)
    model.to(device).train()
    if compile_:
        model.compile()
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    seconds = args.steps * time_training_steps(model, video, args.steps, args.warmup)
    clips_per_s = args.batch * args.steps / seconds
    train_flops = 3 * forward_flops(name, args.frames, args.size)
    peak = peak_flops(device, args.peak_tflops)
    return {
        "model": name,
        "compile": compile_,
        "grad_checkpointing": checkpointing,
        "batch": args.batch,
        "clips_per_s": clips_per_s,
        "step_ms": 1e3 * seconds / args.steps,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "tflops_per_s": train_flops * clips_per_s / 1e12,
        "mfu": train_flops * clips_per_s / peak if peak else float("nan"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mvit_b,uniformer_s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", default="off,on", help="off, on or both (off,on)")
    parser.add_argument("--checkpointing", default="off,on", help="activation checkpointing: off, on or both")
    parser.add_argument("--channels-last", action="store_true", help="channels-last-3d weights and inputs (GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s for MFU")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    switches = {"off": False, "on": True}
    rows = []
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}, {args.frames}x{args.size}x{args.size} clips")
    columns = ("compile", "ckpt", "batch", "clips/s", "ms/step", "mem GiB", "TFLOP/s", "MFU")
    print(f"{'model':<14}" + "".join(f"{c:>9}" for c in columns))
    for name, c, k in itertools.product(args.models.split(","), args.compile.split(","), args.checkpointing.split(",")):
        try:
            row = run(name, switches[c], switches[k], args, device)
        except torch.OutOfMemoryError:
            row = {"model": name, "compile": switches[c], "grad_checkpointing": switches[k], "error": "out of memory"}
            torch.cuda.empty_cache()
        rows.append(row)
        if "error" in row:
            print(f"{name:<14}{c:>9}{k:>9}  {row['error']}")
        else:
            print(
                f"{name:<14}{c:>9}{k:>9}{row['batch']:>9}{row['clips_per_s']:>9.1f}{row['step_ms']:>9.1f}"
                f"{row['peak_mem_gib']:>9.2f}{row['tflops_per_s']:>9.2f}{row['mfu']:>9.1%}"
            )
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
