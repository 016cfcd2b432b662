"""Which 2D -> 3D inflation fine-tunes best: ``inflate="center"`` or ``inflate="mean"``, on the embedded dataset.

The experiment stands in for "ImageNet weights -> video". Single frames of the embedded dataset carry no class
(both classes of a pair have the same frames, and all pairs draw from the same scenes and objects), so the image
task is drawn from the same world instead: images rendered by the dataset's generator (a textured background, one
disc, square or diamond of random colour, size and place, pixel noise), labelled by where the object is (which of
the four quadrants holds its centre): the localisation that the motion classes need, frame by frame. A timm 2D
Twins with the dimensions of our tiny variant learns it; its state dict is saved exactly as timm writes it, loaded
into the 3D model through ``create_model(..., pretrained=path, inflate=mode)`` (the 4-class head is dropped) and
fine-tuned on the clips. The same fine-tuning from random weights is the baseline. Every run sees the same clips in
the same order (no augmentation, clips decoded once into memory), so the rows differ only in the initialisation.
The 2D accuracy is printed: the comparison only means something when the image model has learnt its task.

    python scripts/inflation_experiment.py                              # twins_pcpvt_tiny, 6 epochs, seed 0
    python scripts/inflation_experiment.py --seeds 0,1,2,3,4            # repeated, with a summary over seeds
    python scripts/inflation_experiment.py --model twins_svt_tiny --epochs 4
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from rich.table import Table

from videorec.data.decoding import read_frames
from videorec.data.synthetic import SyntheticDataModule
from videorec.models import create_model

MEAN, STD = 0.45, 0.225


def load_clips(root: Path, split: str, num_frames: int, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All clips of a split, the first ``num_frames`` frames at stride ``rate``: (N, 3, T, H, W) float, (N,) labels."""
    clips, labels = [], []
    lines = (root / f"{split}.txt").read_text().splitlines()
    for line in track(lines, description=f"decoding {split}"):
        path, label = line.rsplit(" ", 1)
        frames = read_frames(root / path, lambda n: np.minimum(np.arange(num_frames) * rate, n - 1))
        clips.append(frames.permute(3, 0, 1, 2))
        labels.append(int(label))
    x = torch.stack(clips).float().div_(255).sub_(MEAN).div_(STD)
    return x, torch.tensor(labels)


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rendered images of the embedded dataset's world, labelled by the quadrant of the object's centre."""
    from videorec.data.synthetic import SIZE, _background, _object_alpha

    rng = np.random.default_rng(seed)
    shapes = ("disc", "square", "diamond")
    images, labels = [], []
    for _ in range(n):
        shape = shapes[int(rng.integers(3))]
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        radius = rng.uniform(4.5, 8.5) * rng.uniform(0.5, 1.8)
        cx, cy = rng.uniform(radius + 1, SIZE - radius - 1, size=2)
        alpha = _object_alpha(shape, cx, cy, radius)[..., None]
        label = int(cx >= SIZE / 2) + 2 * int(cy >= SIZE / 2)
        image = _background(rng) * (1 - alpha) + colour * alpha + rng.normal(0, 5, size=(SIZE, SIZE, 3))
        images.append(torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)))
        labels.append(label)
    x = torch.stack(images).permute(0, 3, 1, 2).float().div_(255).sub_(MEAN).div_(STD)
    return x, torch.tensor(labels)


def timm_twins_like(name: str, num_classes: int) -> torch.nn.Module:
    """timm's 2D Twins with the stage plan of our tiny variant (same dimensions, heads, depths and windows)."""
    from timm.models.twins import Twins

    cfg = create_model(name, num_classes=num_classes).variant_args  # the variant's architecture arguments
    kwargs = dict(img_size=cfg["img_size"], num_classes=num_classes)
    kwargs |= {k: tuple(cfg[k]) for k in ("embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios")}
    if cfg.get("window_sizes"):
        kwargs["wss"] = tuple(cfg["window_sizes"])
    return Twins(**kwargs)


def fit(model, x, y, xv, yv, epochs: int, lr: float, batch: int, seed: int, label: str) -> list[float]:
    """AdamW, one warmup epoch then cosine, label smoothing 0.1; returns the validation top-1 after each epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = len(y) // batch
    total = epochs * steps_per_epoch
    accs, step = [], 0
    order = torch.Generator().manual_seed(seed)
    for _ in track(range(epochs), description=label):
        model.train()
        perm = torch.randperm(len(y), generator=order)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            warm = min(1.0, (step + 1) / steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xv[i : i + 64]).argmax(1) for i in range(0, len(yv), 64)])
        accs.append((pred == yv).float().mean().item())
    return accs


INITS = [("inflate=center", "center"), ("inflate=mean", "mean"), ("random init", None)]


def run_seed(args, seed: int, clips: tuple, console: Console) -> dict[str, list[float]]:
    """One repetition: 2D pre-training, then the three fine-tunings. Returns the validation top-1 per epoch of each."""
    x, y, xv, yv = clips
    torch.manual_seed(seed)
    # 1. 2D pre-training: where the object is, in rendered images of the same world
    images, image_labels = quadrant_images(args.images, seed)
    val_images, val_image_labels = quadrant_images(1000, seed + 1)
    image_model = timm_twins_like(args.model, 4)
    start = time.perf_counter()
    image_acc = fit(
        image_model, images, image_labels, val_images, val_image_labels,
        args.image_epochs, args.image_lr, 64, seed, f"seed {seed}: 2D pre-training",
    )  # fmt: skip
    console.print(
        f"seed {seed}: 2D pre-training (timm Twins, quadrant of the object, 4 classes): top-1 {image_acc[-1]:.3f} "
        f"after {args.image_epochs} epochs of {args.images} images, {time.perf_counter() - start:.0f} s"
    )
    results: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "twins_2d.pth"
        torch.save(image_model.state_dict(), ckpt)
        # 2. video fine-tuning: center, mean, and random initialisation
        for label, inflate in INITS:
            pretrained = ckpt if inflate else None
            model = create_model(args.model, num_classes=int(y.max()) + 1, pretrained=pretrained, inflate=inflate)
            start = time.perf_counter()
            results[label] = fit(model, x, y, xv, yv, args.epochs, args.lr, args.batch, seed, f"seed {seed}: {label}")
            times[label] = time.perf_counter() - start

    table = Table(title=f"seed {seed}, {args.model}: validation top-1 per fine-tuning epoch (lr {args.lr})")
    table.add_column("initialisation", no_wrap=True)
    for epoch in range(args.epochs):
        table.add_column(f"ep {epoch + 1}", justify="right")
    table.add_column("best", justify="right")
    table.add_column("time", justify="right")
    for label, accs in results.items():
        table.add_row(label, *(f"{a:.3f}" for a in accs), f"{max(accs):.3f}", f"{times[label]:.0f} s")
    console.print(table)
    return results


def summarise(per_seed: dict[int, dict[str, list[float]]], console: Console) -> dict[str, dict[str, float]]:
    """Mean and spread of the best and the last accuracy per initialisation, and how often each was best."""
    labels = [label for label, _ in INITS]
    wins = dict.fromkeys(labels, 0)
    for results in per_seed.values():
        wins[max(labels, key=lambda label: max(results[label]))] += 1
    summary = {}
    table = Table(title=f"over {len(per_seed)} seeds ({', '.join(map(str, per_seed))})")
    for column in ("initialisation", "best: mean", "best: std", "last: mean", "seeds won"):
        table.add_column(column, justify="left" if column == "initialisation" else "right")
    for label in labels:
        best = np.array([max(results[label]) for results in per_seed.values()])
        last = np.array([results[label][-1] for results in per_seed.values()])
        summary[label] = dict(best_mean=best.mean(), best_std=best.std(), last_mean=last.mean(), wins=wins[label])
        table.add_row(label, f"{best.mean():.3f}", f"{best.std():.3f}", f"{last.mean():.3f}", str(wins[label]))
    console.print(table)
    return summary


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="twins_pcpvt_tiny")
    parser.add_argument("--root", default=str(Path.home() / ".cache" / "videorec" / "synthetic-v3"))
    parser.add_argument("--epochs", type=int, default=6, help="video fine-tuning epochs")
    parser.add_argument("--image-epochs", type=int, default=6, help="2D pre-training epochs")
    parser.add_argument("--images", type=int, default=8000, help="rendered images for the 2D pre-training")
    parser.add_argument("--image-lr", type=float, default=5e-4, help="2D pre-training learning rate")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each repeats the whole experiment")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    console = Console(width=None if sys.stdout.isatty() else 120)  # full tables when the output is logged

    root = Path(args.root).expanduser()
    SyntheticDataModule(root=str(root)).prepare_data()  # generates the dataset on first use
    num_frames, rate = 8, 2
    clips = (*load_clips(root, "train", num_frames, rate), *load_clips(root, "val", num_frames, rate))
    per_seed = {seed: run_seed(args, seed, clips, console) for seed in seeds}
    return summarise(per_seed, console)


if __name__ == "__main__":
    main()
