"""The embedded synthetic dataset: eight motion classes that only temporal reasoning tells apart.

Every video is 16 frames of 64 x 64 pixels: one object (disc, square or diamond, random colour and size) over a
smooth random background with fresh pixel noise in every frame. Classes come in time-reversal pairs, and the second
class of each pair is *made* by reversing a video of the first, so both classes of a pair have exactly the same
distribution of single frames:

| pair | forward class | its time reversal | motion |
|---|---|---|---|
| 0 | `move_right` | `move_left` | horizontal translation across a segment |
| 1 | `move_down` | `move_up` | vertical translation across a segment |
| 2 | `clockwise` | `counterclockwise` | along a circular arc (150-270 degrees) |
| 3 | `approach` | `recede` | the object grows (comes closer) while drifting a little |

Video i of a backward class is video i of its forward class played in reverse (same scene), so within a pair the
frames are exactly the same and only their order differs. One frame repeated, or the frames shuffled, can at best tell
the pair (the kind of path), which caps top-1 at 50 %; the control runs of the demo measure about 18 %. A model must
use the order of the frames to exceed that.

The files are real H.264 mp4s written with PyAV, with Kinetics-style lists (`train.txt`, `val.txt`: `<path> <label>`)
and `classes.txt`, read through exactly the same `KineticsDataModule` path (decord) as Kinetics. Generation is
deterministic (seeded per video, single-threaded x264) and atomic: written to a temporary folder, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .datasets import VideoRecord, dist_info
from .kinetics import KineticsDataModule

__all__ = ["CLASSES", "VERSION", "SyntheticDataModule", "generate", "render"]

VERSION = "v3"
CLASSES = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "clockwise",
    "counterclockwise",
    "approach",
    "recede",
)
# Each odd class is the time reversal of the even class before it.
FORWARD = {name: CLASSES[i - i % 2] for i, name in enumerate(CLASSES)}
SIZE, FRAMES, FPS = 64, 16, 8


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour texture, (H, W, 3) float in [0, 255]."""
    coarse = rng.uniform(0, 1, size=(6, 6, 3))
    grid = np.linspace(0, 5, SIZE)
    i0 = np.floor(grid).astype(int).clip(0, 4)
    frac = grid - i0
    rows = coarse[i0] * (1 - frac)[:, None, None] + coarse[i0 + 1] * frac[:, None, None]  # (H, 6, 3)
    texture = rows[:, i0] * (1 - frac)[None, :, None] + rows[:, i0 + 1] * frac[None, :, None]  # (H, W, 3)
    base = rng.uniform(40, 140, size=3)
    return base + rng.uniform(20, 70) * (texture - 0.5)


def _object_alpha(shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """Anti-aliased coverage of a disc / square / diamond centred at (cx, cy), (H, W) in [0, 1]."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = np.abs(xs - cx), np.abs(ys - cy)
    if shape == "disc":
        dist = np.hypot(dx, dy)
    elif shape == "square":
        dist = np.maximum(dx, dy) * 1.1
    else:
        dist = (dx + dy) * 0.75
    return np.clip(radius + 0.5 - dist, 0, 1)


def _trajectory(kind: str, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object centres and radii, each (T,), for one of the four forward classes."""
    t = np.linspace(0, 1, FRAMES)
    margin = radius + 1
    radii = np.full(FRAMES, radius)
    if kind in ("move_right", "move_down"):
        length = rng.uniform(24, 40)
        start = rng.uniform(margin, SIZE - margin - length)
        along, across = start + length * t, np.full(FRAMES, rng.uniform(margin, SIZE - margin))
        return (along, across, radii) if kind == "move_right" else (across, along, radii)
    if kind == "clockwise":  # image y points down: increasing angle turns clockwise on screen
        orbit = rng.uniform(12, 19)
        cx, cy = rng.uniform(margin + orbit, SIZE - margin - orbit, size=2)
        theta = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(150, 270)) * t
        return cx + orbit * np.cos(theta), cy + orbit * np.sin(theta), radii
    # approach: the object grows from about half to about twice the base radius, drifting slowly
    grow = np.geomspace(rng.uniform(0.45, 0.6), rng.uniform(1.5, 1.8), FRAMES) * radius
    far = grow[-1] + 1
    cx, cy = rng.uniform(far, SIZE - far, size=2)
    drift = rng.uniform(-4, 4, size=2)
    return cx + drift[0] * (t - 0.5), cy + drift[1] * (t - 0.5), grow


def render(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """One video of `class_name` as (T, H, W, 3) uint8 frames (the partner classes are reversed forward videos)."""
    if class_name not in FORWARD:
        raise ValueError(f"unknown synthetic class {class_name!r}; classes: {CLASSES}")
    background = _background(rng)
    shape = ("disc", "square", "diamond")[rng.integers(3)]
    colour = rng.uniform(0, 255, size=3)
    colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # keep it saturated
    radius = rng.uniform(4.5, 8.5)
    xs, ys, radii = _trajectory(FORWARD[class_name], rng, radius)
    noise = rng.normal(0, 5, size=(FRAMES, SIZE, SIZE, 3))
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(FRAMES):
        alpha = _object_alpha(shape, xs[i], ys[i], radii[i])[..., None]
        frames[i] = np.clip(background * (1 - alpha) + colour * alpha + noise[i], 0, 255).astype(np.uint8)
    return frames[::-1].copy() if FORWARD[class_name] != class_name else frames


def _encode(path: Path, frames: np.ndarray, crf: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        # asm=0: x264's SIMD code paths made the bytes of some videos differ from run to run with the same frames; the
        # plain C paths encode the same bytes every time (and the videos are tiny)
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "asm=0"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(root: str | os.PathLike, train_per_class: int, val_per_class: int, seed: int = 0, crf: int = 26) -> Path:
    """Write the dataset to `root` atomically (a temporary sibling folder renamed into place).

    Returns:
        `root`. If another process finished first, its copy is kept and ours discarded.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for split_id, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
            lines = []
            for label, name in enumerate(CLASSES):
                folder = tmp / "videos" / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, split_id, label // 2, i])  # partners share scenes
                    _encode(folder / f"{i:04d}.mp4", render(name, rng), crf)
                    lines.append(f"videos/{split}/{name}/{i:04d}.mp4 {label}")
            (tmp / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        meta = dict(version=VERSION, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed, crf=crf)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class SyntheticDataModule(KineticsDataModule):
    """The embedded dataset, generated on first use and read exactly like Kinetics.

    Args:
        root: cache folder (`${oc.env:VIDEOREC_CACHE,~/.cache/videorec}/synthetic-v3` in the config).
        train_per_class: training videos per class.
        val_per_class: validation videos per class (the test split is the validation split).
        generation_seed: seed of the generator.
        crf: x264 constant rate factor.
        **kwargs: the shared `VideoDataModule` arguments.
    """

    def __init__(
        self,
        root: str = f"~/.cache/videorec/synthetic-{VERSION}",
        train_per_class: int = 150,
        val_per_class: int = 25,
        generation_seed: int = 0,
        crf: int = 26,
        **kwargs,
    ) -> None:
        super().__init__(
            root=root,
            class_names=list(CLASSES),
            train_list="train.txt",
            val_list="val.txt",
            test_list="val.txt",
            **kwargs,
        )
        self.meta = dict(
            version=VERSION, train_per_class=train_per_class, val_per_class=val_per_class, seed=generation_seed, crf=crf
        )

    def prepare_data(self) -> None:
        """Generate the dataset if the cache folder has none (Lightning calls this on one process per node)."""
        meta_file = self.root / "meta.json"
        if meta_file.exists():
            found = json.loads(meta_file.read_text())
            if found != self.meta:
                raise RuntimeError(
                    f"{self.root} holds a synthetic dataset made with {found}, not {self.meta}: "
                    "delete it or point data.root elsewhere"
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise RuntimeError(f"{self.root} exists but holds no complete synthetic dataset (no meta.json)")
        if self.root.exists():
            self.root.rmdir()
        m = self.meta
        generate(self.root, m["train_per_class"], m["val_per_class"], seed=m["seed"], crf=m["crf"])

    def flip_labels(self) -> dict[int, int | None]:
        """A horizontal flip turns right into left and clockwise into counter-clockwise; the other classes stay."""
        swap = {"move_right": "move_left", "clockwise": "counterclockwise"}
        swap.update({b: a for a, b in swap.items()})
        return {i: CLASSES.index(swap.get(name, name)) for i, name in enumerate(CLASSES)}

    def load_records(self, split: str) -> list[VideoRecord]:
        if not (self.root / "meta.json").exists():
            if dist_info()[1] > 1:
                raise FileNotFoundError(f"{self.root}: no synthetic dataset; prepare_data() must run first")
            self.prepare_data()
        return super().load_records(split)
