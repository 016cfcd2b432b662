"""Which side limits training, the data loader or the model? And how many loader workers would feed the model?

The loader is the training loader of a composed data config (decode, sample, augment, collate), timed over whole
batches after a warm-up, at each worker count asked for; the model is one training step (forward, loss, backward,
AdamW) on random clips of the same geometry, in bf16 autocast on a GPU. Both are reported in clips/s.

    python scripts/bench_pipeline.py data=k400 data.root=/data/k400 --model mvit_b --workers 8
    python scripts/bench_pipeline.py --model uniformer_tiny --workers 0,2 --batches 10      # the embedded dataset
"""

from __future__ import annotations

import argparse
import math
import sys
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


def loader_clips_per_s(data_cfg, workers: int, batches: int, warmup: int) -> float:
    with open_dict(data_cfg):
        data_cfg.num_workers = workers
        data_cfg.persistent_workers = False
    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()

    def endless():  # epochs back to back: a small dataset still gives as many batches as asked for
        while True:
            yield from loader

    iterator = endless()
    for _ in range(warmup):
        next(iterator)
    clips, start = 0, time.perf_counter()
    for _ in range(batches):
        clips += len(next(iterator)["label"])
    return clips / (time.perf_counter() - start)


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
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches per worker count")
    parser.add_argument("--steps", type=int, default=10, help="timed model steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    with initialize_config_module(config_module="videorec.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*args.overrides, f"model={args.model}"])
    data_cfg = cfg.data
    counts = [int(w) for w in args.workers.split(",")] if args.workers else [int(data_cfg.num_workers)]
    device = torch.device(args.device)
    model = model_clips_per_s(args.model, data_cfg, device, args.steps, args.warmup)
    print(f"data={data_cfg.name}, {data_cfg.num_frames}x{data_cfg.crop_size}x{data_cfg.crop_size} clips, batch "
          f"{data_cfg.batch_size}, decoder {data_cfg.decoder}; model {args.model} on {device}")  # fmt: skip
    print(f"model training: {model:.1f} clips/s")
    rows = []
    for workers in counts:
        total = loader_clips_per_s(data_cfg.copy(), workers, args.batches, args.warmup)
        per_worker = total / max(1, workers)
        rows.append({"workers": workers, "clips_per_s": total, "clips_per_s_per_worker": per_worker})
        print(f"loader, {workers} worker(s): {total:.1f} clips/s ({per_worker:.1f} per worker)")
    best = max(rows, key=lambda r: r["clips_per_s"])
    needed = math.ceil(model / rows[-1]["clips_per_s_per_worker"]) if rows[-1]["clips_per_s_per_worker"] else None
    bottleneck = "loader" if best["clips_per_s"] < model else "model"
    print(
        f"bottleneck: the {bottleneck} ({best['clips_per_s']:.1f} clips/s loaded at best against {model:.1f} "
        f"trained); about {needed} worker(s) at {rows[-1]['clips_per_s_per_worker']:.1f} clips/s each would feed "
        f"the model (on {torch.get_num_threads()} compute threads here)"
    )
    return {"model_clips_per_s": model, "loader": rows, "bottleneck": bottleneck, "workers_needed": needed}


if __name__ == "__main__":
    main()
