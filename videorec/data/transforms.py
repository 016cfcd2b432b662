"""Clip transforms (torchvision.transforms.v2) and the train-batch mixup/cutmix.

A clip arrives as uint8 frames (T, H, W, 3) and leaves as a normalised float tensor (C, T, H, W). Every frame of a
clip gets the same random crop, RandAugment op and erased box (v2 treats the frames as one video). Horizontal flips
are label-aware and happen in the dataset (see `datasets.VideoClipDataset`), not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["EvalClipTransform", "MixupCutmix", "TrainClipTransform", "spatial_crop"]

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


def _to_video(frames: torch.Tensor) -> tv_tensors.Video:
    """(T, H, W, 3) uint8 -> v2 Video (T, 3, H, W)."""
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))


def _finish(video: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) -> (C, T, H, W) plain contiguous tensor."""
    return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


class TrainClipTransform:
    """Random resized crop -> RandAugment -> float + normalise -> random erasing.

    Args:
        crop_size: output side.
        scale: area range of the random resized crop.
        ratio: aspect-ratio range of the random resized crop.
        randaug_n: RandAugment ops per clip (0 turns it off).
        randaug_m: RandAugment magnitude (torchvision's 0-30 scale; the Kinetics recipes use 7).
        random_erasing: probability of erasing one box (0 turns it off).
        mean: per-channel mean on [0, 1] pixels.
        std: per-channel std on [0, 1] pixels.
    """

    def __init__(
        self,
        crop_size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        randaug_n: int = 0,
        randaug_m: int = 9,
        random_erasing: float = 0.0,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        steps: list = [v2.RandomResizedCrop(crop_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        if randaug_n > 0:
            steps.append(v2.RandAugment(num_ops=randaug_n, magnitude=randaug_m))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
        if random_erasing > 0:
            steps.append(v2.RandomErasing(p=random_erasing, value=0))
        self.transform = v2.Compose(steps)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (T, H, W, 3) uint8 -> (C, T, crop, crop) float."""
        return _finish(self.transform(_to_video(frames)))


def spatial_crop(video: torch.Tensor, size: int, crop_index: int, num_crops: int) -> torch.Tensor:
    """Crop a (..., H, W) tensor to size x size: the centre (1 crop) or left/top, centre, right/bottom along the
    longer side (3 crops, PySlowFast's uniform crop)."""
    height, width = video.shape[-2:]
    y, x = (height - size) // 2, (width - size) // 2
    if num_crops == 3:
        if height > width:
            y = [0, (height - size) // 2, height - size][crop_index]
        else:
            x = [0, (width - size) // 2, width - size][crop_index]
    elif num_crops != 1:
        raise ValueError(f"eval_crops must be 1 or 3, got {num_crops}")
    return video[..., y : y + size, x : x + size]


class EvalClipTransform:
    """Short-side resize -> centre or three-crop -> float + normalise.

    Args:
        crop_size: output side.
        short_side: the short side after resizing (>= crop_size).
        mean: per-channel mean on [0, 1] pixels.
        std: per-channel std on [0, 1] pixels.
    """

    def __init__(
        self, crop_size: int, short_side: int, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
    ) -> None:
        if short_side < crop_size:
            raise ValueError(f"eval_short_side ({short_side}) must be >= crop_size ({crop_size})")
        self.crop_size, self.short_side = crop_size, short_side
        self.resize = v2.Resize(short_side, antialias=True)
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, frames: torch.Tensor, crop_index: int = 0, num_crops: int = 1) -> torch.Tensor:
        """frames: (T, H, W, 3) uint8 -> (C, T, crop, crop) float."""
        video = self.resize(_to_video(frames))
        video = spatial_crop(video, self.crop_size, crop_index, num_crops)
        return _finish(self.normalise(video))


class MixupCutmix:
    """Batch-level mixup / cutmix (torchvision v2) producing soft targets.

    Label smoothing is the LightningModule's job; targets here are the plain mixed one-hot vectors.

    Args:
        num_classes: classes of the dataset.
        mixup_alpha: Beta parameter of mixup (0 turns mixup off).
        cutmix_alpha: Beta parameter of cutmix (0 turns cutmix off).
        prob: probability of mixing a batch at all (else one-hot targets).
        switch_prob: probability of cutmix rather than mixup when both are on.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        self.num_classes, self.prob = num_classes, prob
        choices, weights = [], []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
            weights.append(1 - switch_prob if cutmix_alpha > 0 else 1.0)
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
            weights.append(switch_prob if mixup_alpha > 0 else 1.0)
        if not choices:
            raise ValueError("MixupCutmix needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mix = v2.RandomChoice(choices, p=weights) if len(choices) > 1 else choices[0]

    def __call__(self, video: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video: (B, C, T, H, W), label: (B,) -> mixed video, target (B, num_classes) float."""
        if len(label) < 2 or float(torch.rand(())) >= self.prob:
            return video, F.one_hot(label, self.num_classes).float()
        # (B, C, T, H, W) -> v2 Video (B, T, C, H, W): one box / one lambda per pair, the same for every frame.
        mixed, target = self.mix(tv_tensors.Video(video.permute(0, 2, 1, 3, 4)), label)
        return mixed.as_subclass(torch.Tensor).permute(0, 2, 1, 3, 4).contiguous(), target
