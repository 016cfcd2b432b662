"""Validation clips for people to watch: ``ValidationSamples`` logs a few per epoch to W&B as ``wandb.Video``.

``wandb.Video`` encodes numpy arrays with moviepy, which videorec does not depend on; :func:`write_clip` encodes
the clip itself with PyAV (H.264 mp4 in yuv420p, which browsers play; a GIF where the FFmpeg build has no libx264)
and W&B is handed the file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

__all__ = ["ValidationSamples", "to_uint8_frames", "write_clip"]

log = logging.getLogger("videorec")


def to_uint8_frames(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float], min_side: int = 0) -> np.ndarray:
    """A normalised (C, T, H, W) clip as (T, H, W, 3) uint8 RGB frames: un-normalised with the data's ``mean`` and
    ``std`` (on [0, 1] pixels), enlarged by a whole factor (nearest pixel) until its short side reaches
    ``min_side``, and padded to even sides (H.264 in yuv420p needs them)."""
    c = clip.shape[0]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(c, 1, 1, 1)
    pixels = (clip.detach().float().cpu() * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)
    frames = pixels.permute(1, 2, 3, 0).numpy()  # (T, H, W, C)
    if c == 1:
        frames = np.repeat(frames, 3, axis=-1)
    short = min(frames.shape[1:3])
    factor = max(1, -(-min_side // short)) if min_side else 1
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def write_clip(frames: np.ndarray, path: str | Path, fps: float = 4) -> Path:
    """Encode (T, H, W, 3) uint8 frames into ``path`` (its suffix is replaced by .mp4, or .gif without libx264)."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "gif"
    path = Path(path).with_suffix(".mp4" if codec == "libx264" else ".gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        if codec == "libx264":
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.pix_fmt = "rgb8"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class ValidationSamples(L.Callback):
    """With a W&B logger: ``num_clips`` validation clips per epoch as ``wandb.Video`` under ``key``, each captioned
    with the predicted class (and its probability) and the true class. Without one it does nothing.

    The clips are the first ones of rank 0's validation batches (the same videos every epoch, so the predictions can
    be followed), taken with the logits that ``validation_step`` returns: no extra forward pass. Only rank 0 does
    anything, and nothing here communicates with the other ranks (no collective, no ``self.log``), so a rank can
    never wait in it for the others. The encoded files stay in ``folder`` (``epoch<NNN>_<i>.mp4``).

    Args:
        num_clips: clips logged per epoch.
        fps: frame rate of the encoded clips (the clips' frames are ``sampling_rate`` apart in the video).
        folder: where the files are written (default: ``<trainer.default_root_dir>/media/val_samples``).
        key: the W&B key.
        min_side: small clips are enlarged (nearest pixel) until their short side reaches this.
    """

    def __init__(
        self,
        num_clips: int = 4,
        fps: float = 4,
        folder: str | None = None,
        key: str = "val/samples",
        min_side: int = 128,
    ) -> None:
        if num_clips < 0:
            raise ValueError(f"callbacks.val_samples.num_clips must be >= 0, got {num_clips}")
        self.num_clips, self.fps, self.folder, self.key, self.min_side = num_clips, fps, folder, key, min_side
        self._clips: list[tuple[torch.Tensor, int, int, float]] = []

    @staticmethod
    def _wandb(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            self.num_clips > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and self._wandb(trainer) is not None
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clips = []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if len(self._clips) >= self.num_clips or not self._active(trainer):
            return
        if not isinstance(outputs, torch.Tensor) or not isinstance(batch, dict) or outputs.ndim != 2:
            return  # a batch whose videos were all undecodable, or a module that returns no logits
        n = min(self.num_clips - len(self._clips), outputs.shape[0])
        probs = outputs[:n].detach().float().softmax(-1).cpu()
        score, pred = probs.max(-1)
        labels = batch["label"][:n].cpu()
        for i in range(n):
            self._clips.append((batch["video"][i].detach().cpu(), int(labels[i]), int(pred[i]), float(score[i])))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._clips or not self._active(trainer):
            return
        clips, self._clips = self._clips, []
        datamodule = getattr(trainer, "datamodule", None)
        mean = getattr(datamodule, "mean", None) or (0.45, 0.45, 0.45)
        std = getattr(datamodule, "std", None) or (0.225, 0.225, 0.225)
        names = list(pl_module.hparams.get("class_names") or getattr(datamodule, "class_names", None) or [])

        def name(k: int) -> str:
            return names[k] if k < len(names) else str(k)

        folder = Path(self.folder or Path(trainer.default_root_dir) / "media" / "val_samples")
        paths, captions = [], []
        for i, (clip, label, pred, score) in enumerate(clips):
            frames = to_uint8_frames(clip, mean, std, self.min_side)
            paths.append(str(write_clip(frames, folder / f"epoch{trainer.current_epoch:03d}_{i}", self.fps)))
            mark = "right" if pred == label else "wrong"
            captions.append(f"pred: {name(pred)} ({score:.2f}) | true: {name(label)} | {mark}")
        self._wandb(trainer).log_video(self.key, paths, step=trainer.global_step, caption=captions)
        log.debug("logged %d validation clips to W&B (%s)", len(paths), folder)
