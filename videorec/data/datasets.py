"""The map-style clip dataset every datamodule reads through, its samplers and its collate.

One item of `VideoClipDataset` is one (video, clip) pair: in training a random clip of video `i`; in evaluation the
uniformly spaced clip `clip_index` of video `i // num_clips`, returned as `num_crops` spatial views decoded once.

Training randomness is a function of (seed, epoch, index): `TrainDistributedSampler` yields `(index, epoch)` pairs and
each item draws its clip start, flip and augmentation from an RNG seeded with them (the collate seeds the batch's mixup
from its first item). So a clip is augmented the same way whatever the number of workers or ranks, and a resumed run
sees exactly the clips the uninterrupted run would have seen.
An item is a list of samples (dicts); a video that cannot be decoded gives `[{"skipped": "<path>: <reason>"}]`
instead, and the collate drops it from the batch and lists it under the batch key `skipped`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from .decoding import VideoDecodeError, read_frames
from .sampling import apply_temporal_control, dense_indices, segment_indices
from .transforms import EvalClipTransform, MixupCutmix, TrainClipTransform

__all__ = [
    "VIDEO_SUFFIXES",
    "ListFileError",
    "EvalDistributedSampler",
    "TrainDistributedSampler",
    "VideoClipDataset",
    "VideoCollate",
    "VideoRecord",
    "dist_info",
    "seed_worker",
]


# File suffixes taken as videos in class folders, in SSv2's video folder and by predict's folder input.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".3gp")


class ListFileError(ValueError):
    """A malformed list or annotation file: the message names the file and the line or entry."""


def sample_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (seed, epoch, index, ...)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Run a block with the global CPU RNG seeded by `seed` (torchvision's transforms draw from it), restored after;
    yields a generator with the same seed for the calls that take one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video: a file, or a folder of extracted frames."""

    path: str
    label: int


class VideoClipDataset(Dataset):
    """Decode, sample and transform clips of labelled videos.

    Args:
        records: the videos.
        train: random clips (and augmentation) or the evaluation views.
        num_frames: T, frames per clip.
        sampling_rate: stride between frames (dense sampling).
        sampling: "dense" (T frames at stride s) or "segment" (one frame from each of T segments).
        transform: a `TrainClipTransform` (train) or `EvalClipTransform` (eval).
        num_clips: evaluation clips per video.
        num_crops: evaluation crops per clip (1 centre, 3 along the long side).
        temporal_control: "none", "repeat" or "shuffle" (see `sampling.apply_temporal_control`).
        decoder: "pyav", "decord" or "torchcodec".
        fallback_decoder: tried when `decoder` fails on a file (None for none).
        decoder_threads: decoding threads per video (0: automatic).
        decode_device: "cpu", or "cuda": NVDEC through torchcodec, frames and transforms on the current GPU (the
            dataset must then be read in the main process: CUDA does not work in forked DataLoader workers).
        flip_prob: probability of a horizontal flip in training.
        flip_labels: label -> label after a horizontal flip (left/right classes swap); a label mapped to None is
            never flipped; labels not in the mapping keep their label.
        seed: base seed of the evaluation views' RNG (temporal shuffles), so evaluation is deterministic.
        num_samples: training clips made from each decoded clip, each with its own flip and augmentation (repeated
            augmentation: PySlowFast's AUG.NUM_SAMPLE, VideoMAE's num_sample); evaluation ignores it.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        train: bool,
        num_frames: int,
        sampling_rate: int,
        sampling: str,
        transform: TrainClipTransform | EvalClipTransform,
        num_clips: int = 1,
        num_crops: int = 1,
        temporal_control: str = "none",
        decoder: str = "pyav",
        fallback_decoder: str | None = "decord",
        decoder_threads: int = 1,
        decode_device: str = "cpu",
        flip_prob: float = 0.0,
        flip_labels: Mapping[int, int | None] | None = None,
        seed: int = 0,
        num_samples: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {num_samples}")
        if sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {sampling!r}")
        self.records = list(records)
        self.train, self.num_frames, self.sampling_rate, self.sampling = train, num_frames, sampling_rate, sampling
        self.transform = transform
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        self.temporal_control, self.decoder, self.fallback_decoder = temporal_control, decoder, fallback_decoder
        self.decoder_threads, self.decode_device = decoder_threads, decode_device
        self.flip_prob, self.flip_labels, self.seed = flip_prob, dict(flip_labels or {}), seed
        self.num_samples = num_samples if train else 1

    def __len__(self) -> int:
        return len(self.records) * self.num_clips

    def _indices(self, num_video_frames: int, clip_index: int | None, generator: torch.Generator | None) -> np.ndarray:
        if self.sampling == "dense":
            indices = dense_indices(
                num_video_frames,
                self.num_frames,
                self.sampling_rate,
                clip_index=clip_index,
                num_clips=self.num_clips,
                generator=generator,
            )
        else:
            indices = segment_indices(
                num_video_frames, self.num_frames, clip_index=clip_index, num_clips=self.num_clips, generator=generator
            )
        return apply_temporal_control(indices, self.temporal_control, generator=generator, train=self.train)

    def __getitem__(self, index: int | tuple[int, int]) -> list[dict[str, Any]]:
        if isinstance(index, tuple):  # (index, epoch) from TrainDistributedSampler: seeded by both
            index, epoch = index
            key = sample_seed(self.seed, epoch, index)
            with seeded(key) as generator:
                return self._item(index, generator, key)
        # Training without an epoch draws from the global RNG; evaluation views are seeded, hence reproducible.
        generator = None if self.train else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return self._item(index, generator, None)

    def _item(self, index: int, generator: torch.Generator | None, key: int | None) -> list[dict[str, Any]]:
        video_index, clip_index = divmod(index, self.num_clips)
        record = self.records[video_index]
        clip = None if self.train else clip_index
        try:
            frames = read_frames(
                record.path,
                lambda n: self._indices(n, clip, generator),
                self.decoder,
                self.fallback_decoder,
                self.decoder_threads,
                self.decode_device,
            )
        except VideoDecodeError as err:
            return [{"skipped": str(err)}]
        if self.train:  # num_samples augmentations of the decoded clip, each with its own draws
            return [
                self._augmented(frames, record.label, video_index, generator, key, k) for k in range(self.num_samples)
            ]
        label = record.label
        return [
            self._sample(self.transform(frames, crop_index, self.num_crops), label, video_index, clip_index, crop_index)
            for crop_index in range(self.num_crops)
        ]

    def _augmented(
        self,
        frames: torch.Tensor,
        label: int,
        video_index: int,
        generator: torch.Generator | None,
        key: int | None,
        k: int,
    ) -> dict[str, Any]:
        """Training sample `k` of a decoded clip: flip and transform, reseeded by (key, k) for k > 0."""
        if key is not None and k > 0:
            key = sample_seed(key, k)
            torch.manual_seed(key)  # inside the item's forked RNG: restored when the item is done
            generator = torch.Generator().manual_seed(key)
        flippable = self.flip_prob > 0 and self.flip_labels.get(label, label) is not None
        flip = flippable and float(torch.rand((), generator=generator)) < self.flip_prob
        video = self.transform(frames)
        if flip:
            # Mirroring the transformed clip (C, T, crop, crop) rather than the decoded frames gives the same
            # distribution (the crop, RandAugment and erasing draws are symmetric in W) at a fraction of the cost:
            # at 720p a copy of the whole decoded clip costs about as much as the rest of the augmentation.
            video = video.flip(-1)
            label = self.flip_labels.get(label, label)
        sample = self._sample(video, label, video_index, 0, 0)
        return sample if key is None else {**sample, "seed": key}

    @staticmethod
    def _sample(video: torch.Tensor, label: int, video_index: int, clip_index: int, crop_index: int) -> dict:
        return {
            "video": video,
            "label": label,
            "video_index": video_index,
            "clip_index": clip_index,
            "crop_index": crop_index,
        }


class VideoCollate:
    """Flatten the items' samples into one batch dict, drop skipped videos, optionally mix up.

    The batch holds `video` (B, C, T, H, W), `label`, `video_index`, `clip_index`, `crop_index` (B,) long, `skipped`
    (list of "<path>: <reason>" strings, possibly empty) and, with mixup/cutmix, `target` (B, num_classes) float.
    If every video of a batch was skipped, B is 0.

    Args:
        clip_shape: (C, T, H, W) of one clip, for an empty batch.
        mixup: the train batch mixer, or None.
    """

    KEYS = ("label", "video_index", "clip_index", "crop_index")

    def __init__(self, clip_shape: Sequence[int], mixup: MixupCutmix | None = None) -> None:
        self.clip_shape, self.mixup = tuple(clip_shape), mixup

    def __call__(self, items: list[list[dict[str, Any]]]) -> dict[str, Any]:
        samples = [sample for item in items for sample in item]
        seeds = [s.pop("seed") for s in samples if "seed" in s]  # training items seeded by (epoch, index)
        good = [s for s in samples if "skipped" not in s]
        if good:
            batch = default_collate(good)
        else:
            batch = {"video": torch.zeros((0, *self.clip_shape))}
            batch |= {key: torch.zeros(0, dtype=torch.long) for key in self.KEYS}
        batch["skipped"] = [s["skipped"] for s in samples if "skipped" in s]
        if self.mixup is not None:
            if seeds:
                with seeded(seeds[0]):
                    batch["video"], batch["target"] = self.mixup(batch["video"], batch["label"])
            else:
                batch["video"], batch["target"] = self.mixup(batch["video"], batch["label"])
        return batch


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainDistributedSampler(DistributedSampler):
    """Lightning's usual shuffled, padded `DistributedSampler`, yielding `(index, epoch)` so that the dataset seeds each
    clip's augmentation by both (see the module docstring). Lightning calls `set_epoch` each epoch."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch  # the order is drawn now, for this epoch
        return ((index, epoch) for index in super().__iter__())


class EvalDistributedSampler(DistributedSampler):
    """Every index exactly once across ranks, in order, with no padding (ranks may differ by one item).

    A `DistributedSampler` subclass, so Lightning's automatic sampler replacement leaves it alone. Evaluation steps
    do no collective communication, so uneven per-rank lengths are safe; metrics synchronise at epoch end.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        rank_, world = dist_info()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=rank_ if rank is None else rank,
            shuffle=False,
        )
        total = len(self.dataset)  # type: ignore[arg-type]
        self.num_samples = max(0, math.ceil((total - self.rank) / self.num_replicas))
        self.total_size = total

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader worker init: one compute thread per worker (the workers together fill the cores; each with the
    process's thread count would oversubscribe them), and distinct RNG streams per rank and worker (the base seed is
    the same on every rank)."""
    import random

    torch.set_num_threads(1)

    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
