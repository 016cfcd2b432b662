"""The shared LightningDataModule: clip sampling, transforms, distributed samplers, loaders.

Batches are dicts:

- `video` (B, C, T, H, W) float, normalised with mean/std 0.45/0.225 on [0, 1] pixels;
- `label`, `video_index`, `clip_index`, `crop_index` (B,) long; views of one video share `video_index`, and in
  test every (clip, crop) view of every video appears exactly once across all ranks;
- `target` (B, num_classes) float soft labels, train only, when mixup or cutmix is on (no label smoothing: the
  LightningModule applies it);
- `skipped`: list of "<path>: <reason>" strings for videos of this batch that could not be decoded.

Skipped videos travel in the batch: a dataset item that fails to decode becomes a marker, the collate (in the worker)
drops it from the tensors and lists it under `skipped`, and `SkippedVideosCallback` adds the lists to a metric in
`on_*_batch_end` that logs `train/skipped_videos` / `val/skipped_videos` / `test/skipped_videos` (distinct videos over
all ranks, gathered with the other epoch metrics) and prints the names. A batch whose videos all failed has B = 0;
the LightningModule should then return a zero loss that still touches its parameters (e.g.
`sum(p.sum() for p in params) * 0`) so DDP stays in step.

Distributed use: the train loader's sampler is a `TrainDistributedSampler` (a `DistributedSampler`: shuffled,
reseeded by `set_epoch`, padded so every rank runs the same number of steps, yielding `(index, epoch)` so that each
clip's augmentation is seeded by both); the val/test samplers are `EvalDistributedSampler` (no padding, so no view
is evaluated twice). Both are `DistributedSampler` instances, so Lightning leaves them in place whatever
`use_distributed_sampler` says, and its fit loop calls `set_epoch`. Evaluation ranks may run one batch more than
others: the LightningModule must not run collectives per step in val/test (log with `on_epoch=True`; torchmetrics
synchronise at `compute`). Under `strategy=ddp_spawn` the DataLoader workers inherit the spawn start method (each one a
fresh interpreter importing torch, per loader and epoch): set `data.multiprocessing_context=fork` or
`data.persistent_workers=true` there; torchrun / `strategy=ddp` fork them as usual.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from .datasets import (
    EvalDistributedSampler,
    TrainDistributedSampler,
    VideoClipDataset,
    VideoCollate,
    VideoRecord,
    dist_info,
    seed_worker,
)
from .decoding import check_decode_device, check_decoder
from .sampling import TEMPORAL_CONTROLS
from .transforms import MEAN, STD, EvalClipTransform, MixupCutmix, TrainClipTransform

__all__ = ["VideoDataModule"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _container(value: Any) -> Any:
    """Hydra hands lists over as ListConfig: make them plain."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


class VideoDataModule(L.LightningDataModule):
    """Base of every video datamodule. Subclasses set `class_names` in `__init__` and implement `load_records`.

    Args:
        batch_size: clips per device and step (in val/test, (video, clip) items per step; each brings its crops).
        num_workers: DataLoader worker processes (decoding and transforms run there).
        num_frames: T, frames per clip.
        sampling_rate: stride between clip frames (dense sampling).
        crop_size: spatial side of a clip.
        temporal_control: "none", "repeat" (one frame T times) or "shuffle" (frames in random order), every split.
        pin_memory: DataLoader pin_memory.
        eval_clips: clips per video in test (val always uses 1 clip x 1 crop).
        eval_crops: crops per clip in test (1 centre or 3 along the long side).
        eval_short_side: short side before the eval crop; None: crop_size * 8 / 7 with one crop, crop_size with three.
        decoder: "pyav", "decord" or "torchcodec".
        fallback_decoder: decoder tried when the first fails on a file (None: none).
        decoder_threads: decoding threads per video in each worker (0: FFmpeg's automatic choice).
        decode_device: "cpu", or "cuda" (with decoder="torchcodec"): NVDEC decodes on the GPU and the transforms run
            there. Decoding then happens in the main process (CUDA cannot run in forked workers, and NVDEC works
            asynchronously on its own engine), so num_workers is set to 0 and pin_memory to False.
        train_scale: random resized crop area range.
        train_ratio: random resized crop aspect-ratio range.
        flip: horizontal flip probability 0.5 in training (label-aware: see `flip_labels`).
        randaug_n: RandAugment ops (0: off).
        randaug_m: RandAugment magnitude.
        random_erasing: random erasing probability (0: off).
        mixup_alpha: mixup Beta parameter (0: off).
        cutmix_alpha: cutmix Beta parameter (0: off).
        mixup_prob: probability of mixing a batch when mixup or cutmix is on.
        mixup_switch_prob: probability of cutmix rather than mixup when both are on.
        mean: normalisation mean on [0, 1] pixels.
        std: normalisation std on [0, 1] pixels.
        seed: seed of the train sampler's shuffles and of the evaluation views.
        name: a display name ("synthetic", "k400", ...).
        persistent_workers: keep DataLoader workers alive between epochs.
        multiprocessing_context: start method of the workers ("fork", "spawn", "forkserver"; None: the default).
        prefetch_factor: batches each worker loads ahead (None: PyTorch's default, 2; unused without workers).
        timeout: seconds to wait for a worker's batch before failing (0: forever).
        in_order: hand batches over in sampler order (False lets a fast worker's batch overtake a slow one's).
        drop_last: drop the last incomplete training batch (evaluation never drops a video).
        num_samples: repeated augmentation: each decoded training clip gives this many clips, each flipped and
            augmented on its own draws (PySlowFast's AUG.NUM_SAMPLE). `batch_size` still counts clips, so a step
            holds `batch_size / num_samples` videos (it must divide), and an epoch, which sees every video once,
            takes `num_samples` times as many steps.
    """

    sampling: str = "dense"

    def __init__(
        self,
        *,
        batch_size: int = 8,
        num_workers: int = 2,
        num_frames: int = 16,
        sampling_rate: int = 4,
        crop_size: int = 224,
        temporal_control: str = "none",
        pin_memory: bool = False,
        eval_clips: int = 1,
        eval_crops: int = 1,
        eval_short_side: int | None = None,
        decoder: str = "pyav",
        fallback_decoder: str | None = "decord",
        decoder_threads: int = 1,
        decode_device: str = "cpu",
        train_scale: Sequence[float] = (0.08, 1.0),
        train_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        randaug_n: int = 0,
        randaug_m: int = 9,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        seed: int = 0,
        name: str | None = None,
        persistent_workers: bool = False,
        multiprocessing_context: str | None = None,
        prefetch_factor: int | None = None,
        timeout: float = 0.0,
        in_order: bool = True,
        drop_last: bool = False,
        num_samples: int = 1,
    ) -> None:
        super().__init__()
        if num_samples < 1 or batch_size % num_samples:
            raise ValueError(
                f"data.batch_size={batch_size} must be a multiple of data.num_samples={num_samples} (clips per video)"
            )
        self.num_samples = num_samples
        self.name = name or type(self).__name__
        self.persistent_workers, self.multiprocessing_context = persistent_workers, multiprocessing_context
        self.prefetch_factor, self.timeout, self.in_order, self.drop_last = (
            prefetch_factor,
            timeout,
            in_order,
            drop_last,
        )
        if temporal_control not in TEMPORAL_CONTROLS:
            raise ValueError(f"data.temporal_control must be one of {TEMPORAL_CONTROLS}, got {temporal_control!r}")
        if eval_crops not in (1, 3):
            raise ValueError(f"data.eval_crops must be 1 or 3, got {eval_crops}")
        check_decoder(decoder)
        if fallback_decoder is not None:
            check_decoder(fallback_decoder)
        check_decode_device(decoder, decode_device)
        self.decode_device = decode_device
        if decode_device != "cpu" and (num_workers or pin_memory):
            log.warning(
                "data.decode_device=%s decodes in the main process: data.num_workers %d -> 0, data.pin_memory %s -> "
                "false",
                decode_device,
                num_workers,
                pin_memory,
            )
            num_workers, pin_memory = 0, False
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.num_frames, self.sampling_rate, self.crop_size = num_frames, sampling_rate, crop_size
        self.temporal_control = temporal_control
        self.eval_clips, self.eval_crops, self.eval_short_side = eval_clips, eval_crops, eval_short_side
        self.decoder, self.fallback_decoder, self.decoder_threads = decoder, fallback_decoder, decoder_threads
        self.train_scale, self.train_ratio = tuple(_container(train_scale)), tuple(_container(train_ratio))
        self.flip, self.randaug_n, self.randaug_m, self.random_erasing = flip, randaug_n, randaug_m, random_erasing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.mixup_prob, self.mixup_switch_prob = mixup_prob, mixup_switch_prob
        self.mean, self.std, self.seed = tuple(_container(mean)), tuple(_container(std)), seed
        self.class_names: list[str] = []
        self.records: dict[str, list[VideoRecord]] = {}

    # -- what subclasses provide --------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_records(self, split: str) -> list[VideoRecord]:
        """The labelled videos of `split` ("train", "val" or "test"); errors name the list file and line."""
        raise NotImplementedError

    def flip_labels(self) -> dict[int, int | None]:
        """label -> label after a horizontal flip; None: never flip that class. Default: flips keep labels."""
        return {}

    # -- Lightning hooks -----------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.records:
                self.records[split] = self.load_records(split)

    def set_records(self, split: str, records: Sequence[VideoRecord]) -> None:
        """Use these videos for `split` instead of the dataset's own list (prediction on a user's files)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.records[split] = list(records)

    def dataset(self, split: str) -> VideoClipDataset:
        """The clip dataset of a split (after `setup`)."""
        if split not in self.records:
            self.records[split] = self.load_records(split)
        common = dict(
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            sampling=self.sampling,
            temporal_control=self.temporal_control,
            decoder=self.decoder,
            fallback_decoder=self.fallback_decoder,
            decoder_threads=self.decoder_threads,
            decode_device=self.decode_device,
            seed=self.seed,
        )
        if split == "train":
            transform = TrainClipTransform(
                self.crop_size,
                scale=self.train_scale,
                ratio=self.train_ratio,
                randaug_n=self.randaug_n,
                randaug_m=self.randaug_m,
                random_erasing=self.random_erasing,
                mean=self.mean,
                std=self.std,
            )
            return VideoClipDataset(
                self.records[split],
                train=True,
                num_samples=self.num_samples,
                transform=transform,
                flip_prob=0.5 if self.flip else 0.0,
                flip_labels=self.flip_labels(),
                **common,
            )
        clips, crops = (self.eval_clips, self.eval_crops) if split == "test" else (1, 1)
        short_side = self.eval_short_side or (self.crop_size if crops == 3 else round(self.crop_size * 8 / 7))
        transform = EvalClipTransform(self.crop_size, short_side, mean=self.mean, std=self.std)
        return VideoClipDataset(
            self.records[split], train=False, transform=transform, num_clips=clips, num_crops=crops, **common
        )

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        rank, world = dist_info()
        if split == "train":
            sampler = TrainDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            # Lightning sets the epoch at each epoch start, but a run resumed mid-epoch creates (and fast-forwards)
            # its loader before that: the order must already be the resumed epoch's
            trainer = self.trainer
            sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
        else:
            sampler = EvalDistributedSampler(dataset, num_replicas=world, rank=rank)
        mixup = None
        if split == "train" and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            mixup = MixupCutmix(
                self.num_classes, self.mixup_alpha, self.cutmix_alpha, self.mixup_prob, self.mixup_switch_prob
            )
        # the train loader keeps its position: Lightning saves its state in every checkpoint, so a run resumed from a
        # mid-epoch checkpoint goes on with the next batch of that epoch
        loader = StatefulDataLoader if split == "train" else DataLoader
        return loader(
            dataset,
            batch_size=self.batch_size // self.num_samples if split == "train" else self.batch_size,  # videos
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=VideoCollate((3, self.num_frames, self.crop_size, self.crop_size), mixup),
            pin_memory=self.pin_memory,
            worker_init_fn=functools.partial(seed_worker, rank=rank),
            drop_last=self.drop_last and split == "train",
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            multiprocessing_context=self.multiprocessing_context if self.num_workers > 0 else None,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            timeout=self.timeout if self.num_workers > 0 else 0,
            in_order=self.in_order,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
