"""Clip transforms (torchvision.transforms.v2) and the train-batch mixup/cutmix.

A clip arrives as uint8 frames (T, H, W, 3) and leaves as a normalised float tensor (C, T, H, W). Every frame of a
clip gets the same random crop, RandAugment op and erased box (v2 treats the frames as one video). Horizontal flips
are label-aware and happen in the dataset (see `datasets.VideoClipDataset`), not here.

The training transform is torchvision's pipeline computed faster on CPU clips, with the same random draws and the
same output: the cropped clip is laid out frame-contiguous (T, C, H, W) for RandAugment and plane-contiguous
(C, T, H, W) for the float steps, and `VideoRandAugment` replaces the kernels of RandAugment's slow ops on videos
(sharpness, solarize, equalize, the shears / translations / rotation) by equivalent ones. Repeated augmentation
(`data.num_samples`) pays this cost once per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["EvalClipTransform", "MixupCutmix", "TrainClipTransform", "VideoRandAugment", "spatial_crop"]

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


def _to_video(frames: torch.Tensor) -> tv_tensors.Video:
    """(T, H, W, 3) uint8 -> v2 Video (T, 3, H, W)."""
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))


def _finish(video: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) -> (C, T, H, W) plain contiguous tensor."""
    return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


# ---- RandAugment kernels for CPU videos -------------------------------------------------------------------------
# Each kernel returns exactly what torchvision's kernel returns for a uint8 (..., 3, H, W) video (the tests compare
# them bit for bit); they are faster because they avoid the slow paths torchvision takes on videos: a depthwise
# conv2d (sharpness), `torch.where` on uint8 (solarize, equalize), grid_sample of every float plane (geometry), and
# temporaries of the whole clip in float (working on two frames at a time keeps them in cache).

_CHUNK_FRAMES = 2


def _by_frames(video: torch.Tensor, kernel: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a per-frame `kernel` to (T, C, H, W) two frames at a time (every op here acts on single frames)."""
    if video.ndim != 4 or video.shape[0] <= _CHUNK_FRAMES:
        return kernel(video)
    return torch.cat([kernel(chunk) for chunk in video.split(_CHUNK_FRAMES)])


def _sharpness_frames(video: torch.Tensor, factor: float) -> torch.Tensor:
    # torchvision blurs with [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 in float32 and rounds: the kernel sum is an
    # integer n over 13, which is never within 1/26 of a rounding tie, so round(n / 13) is exact in any order of
    # summation; the shifted-slice box sum (integers, exact in float32) gives the same blurred image. The blend, the
    # clamp and the cast are torchvision's own ops on the same float32 values, so the result is identical.
    out = video.to(torch.float32)
    rows = out[..., :, :-2] + out[..., :, 1:-1]
    rows += out[..., :, 2:]
    blurred = rows[..., :-2, :] + rows[..., 1:-1, :]
    blurred += rows[..., 2:, :]
    inner = out[..., 1:-1, 1:-1]
    blurred.add_(inner, alpha=4.0).mul_(1.0 / 13.0).round_()
    inner.add_(blurred.sub_(inner), alpha=1.0 - factor)
    return out.clamp_(0, 255).to(torch.uint8)


def adjust_sharpness_video(video: torch.Tensor, factor: float) -> torch.Tensor:
    """`F.adjust_sharpness` of a uint8 (T, 3, H, W) video, borders kept (torchvision's definition)."""
    if factor < 0:
        raise ValueError(f"sharpness_factor ({factor}) is not non-negative.")
    if video.shape[-1] <= 2 or video.shape[-2] <= 2:
        return video.clone()
    return _by_frames(video, lambda chunk: _sharpness_frames(chunk, factor))


def solarize_video(video: torch.Tensor, threshold: float) -> torch.Tensor:
    """`F.solarize` of a uint8 video: invert the pixels >= threshold. torchvision compares uint8 with a float32
    threshold, i.e. with its ceiling; x >= t is the carry bit of x + 256 - t (0 <= t <= 256)."""
    if threshold > 255:
        raise TypeError(f"Threshold should be less or equal the maximum value of the dtype, but got {threshold}")
    level = max(0, int(torch.tensor(threshold, dtype=torch.float32).ceil()))
    flip = video.to(torch.int16).add_(256 - level).bitwise_right_shift_(8).to(torch.uint8).mul_(255)
    return video.bitwise_xor(flip)


def equalize_video(video: torch.Tensor) -> torch.Tensor:
    """`F.equalize` of a uint8 video (PIL's per-plane look-up table, torchvision's integer arithmetic); the planes
    torchvision leaves as they are (fewer than 255 pixels below their maximum value) get the identity table instead
    of a `torch.where` over the clip."""
    height, width = video.shape[-2:]
    flat = video.reshape(-1, height * width).long()
    hist = flat.new_zeros((flat.shape[0], 256), dtype=torch.int32)
    hist.scatter_add_(1, flat, hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=-1)
    top = cum_hist.argmax(dim=-1, keepdim=True)
    step = (flat.shape[-1] - hist.gather(1, top)).div_(255, rounding_mode="floor")
    lut = cum_hist[:, :-1].add_(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(lut.shape[0], 1), lut], dim=1)
    identity = torch.arange(256, dtype=lut.dtype, device=lut.device).expand_as(lut)
    lut = torch.where(step.ne(0), lut, identity).to(torch.uint8)
    return lut.gather(1, flat).view(video.shape)


class _PixelMap:
    """Nearest-neighbour resampling as a gather: which input pixel (or the zero fill) lands on each output pixel.

    The map is torchvision's own: the geometric op run on a float image holding pixel index + 1 (exact in float32),
    where grid_sample picks exactly the source value and writes 0 outside. uint8 videos go through the same
    grid_sample in float and are rounded back, so gathering their pixels with the map is the same result.
    """

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], height: int, width: int) -> None:
        index = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, height, width)
        source = op(index).reshape(-1)
        self.inside = bool((source > 0).all())
        self.mask = (source > 0).to(torch.uint8)
        self.source = (source - 1).clamp_(min=0).long()

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        height, width = video.shape[-2:]
        planes = video.reshape(-1, height * width)
        out = planes.gather(1, self.source.expand(planes.shape[0], -1))
        if not self.inside:
            out.mul_(self.mask)
        return out.view(video.shape)


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BY_FRAMES = ("Brightness", "Color", "Contrast", "AutoContrast")


class VideoRandAugment(v2.RandAugment):
    """`v2.RandAugment` with faster kernels for uint8 RGB videos on the CPU.

    Everything that decides the output stays torchvision's: the op list, the magnitude bins, the random draws and
    their order (`forward` is not overridden), the interpolation and the fill. Only the implementation of an op
    applied to a CPU uint8 (T, 3, H, W) video changes, to a kernel that returns the same tensor: sharpness,
    solarize and equalize have their own kernels (`adjust_sharpness_video`, `solarize_video`, `equalize_video`),
    the shears, translations and rotation gather pixels through a cached map computed by torchvision's op (nearest
    interpolation and the default fill, RandAugment's defaults), and the colour ops run torchvision's kernels two
    frames at a time. Anything else (images, GPU tensors, other dtypes, a custom fill) goes to torchvision.
    """

    _MAX_MAPS = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._maps: dict[tuple, _PixelMap] = {}

    def _fast(self, image: Any) -> bool:
        return (
            isinstance(image, tv_tensors.Video)
            and image.device.type == "cpu"
            and image.dtype == torch.uint8
            and image.ndim == 4
            and image.shape[-3] == 3
            and image.numel() > 0
        )

    def _apply_image_or_video_transform(
        self, image: Any, transform_id: str, magnitude: float, interpolation: Any, fill: dict
    ) -> Any:
        if not self._fast(image):
            return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)
        video = image.as_subclass(torch.Tensor)
        if transform_id == "Sharpness":
            out = adjust_sharpness_video(video, 1.0 + magnitude)
        elif transform_id == "Solarize":
            out = solarize_video(video, 255.0 * magnitude)
        elif transform_id == "Equalize":
            out = equalize_video(video)
        elif transform_id in _GEOMETRIC and self.fill is None and _is_nearest(interpolation):
            out = self._pixel_map(transform_id, magnitude, interpolation, fill, *video.shape[-2:])(video)
        elif transform_id in _BY_FRAMES:
            parent = super()._apply_image_or_video_transform
            out = _by_frames(video, lambda chunk: parent(chunk, transform_id, magnitude, interpolation, fill))
        else:
            return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)
        return tv_tensors.wrap(out, like=image)

    def _pixel_map(
        self, transform_id: str, magnitude: float, interpolation: Any, fill: dict, height: int, width: int
    ) -> _PixelMap:
        key = (transform_id, magnitude, height, width)
        if key not in self._maps:
            if len(self._maps) >= self._MAX_MAPS:
                self._maps.clear()
            parent = super()._apply_image_or_video_transform
            self._maps[key] = _PixelMap(
                lambda index: parent(index, transform_id, magnitude, interpolation, fill), height, width
            )
        return self._maps[key]


def _is_nearest(interpolation: Any) -> bool:
    return interpolation in ("nearest", v2.InterpolationMode.NEAREST)


def _frame_major(video: torch.Tensor) -> torch.Tensor:
    """Contiguous (T, C, H, W), the layout RandAugment runs fastest on (decoded frames arrive channels-last)."""
    return tv_tensors.wrap(video.as_subclass(torch.Tensor).contiguous(), like=video)


def _plane_major(video: torch.Tensor) -> torch.Tensor:
    """A (T, C, H, W) view of (C, T, H, W) memory: the float steps keep it and `_finish` is then a view."""
    planes = video.as_subclass(torch.Tensor).transpose(0, 1).contiguous().transpose(0, 1)
    return tv_tensors.wrap(planes, like=video)


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
            steps += [_frame_major, VideoRandAugment(num_ops=randaug_n, magnitude=randaug_m)]
        steps += [_plane_major, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
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
