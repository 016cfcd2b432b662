"""The fast training transform computes exactly what torchvision's pipeline computes.

`VideoRandAugment` and the layout steps of `TrainClipTransform` only change how the ops are computed on CPU uint8
videos. Every comparison here is bit-exact (`torch.equal`): the replaced kernels use integer arithmetic where
torchvision's float math is exact anyway (the sharpness blur is n / 13 with n an integer, never near a rounding tie;
the geometric ops pick whole source pixels), and torchvision's own float ops wherever rounding could matter.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from videorec.data.transforms import (
    MEAN,
    STD,
    TrainClipTransform,
    VideoRandAugment,
    _finish,
    _to_video,
    adjust_sharpness_video,
    equalize_video,
    solarize_video,
)

SPACE = v2.RandAugment._AUGMENTATION_SPACE


def random_video(shape, seed=0, low=0, high=256):
    return torch.randint(low, high, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def layouts(video):
    """The same (T, C, H, W) values frame-contiguous and channels-last (how decoded frames arrive)."""
    return {"contiguous": video.contiguous(), "channels_last": video.contiguous(memory_format=torch.channels_last)}


def awkward_video():
    """Odd sizes, more frames than one chunk, a constant plane and a low-contrast frame (the edge cases of
    autocontrast and equalize)."""
    video = random_video((5, 3, 19, 27), seed=1)
    video[1, 2] = 77
    video[3] = random_video((3, 19, 27), seed=2, low=100, high=104)
    return video


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", sorted(SPACE))
def test_every_op_and_magnitude_matches_torchvision(op, layout):
    video = tv_tensors.Video(layouts(awkward_video())[layout])
    fast, reference = VideoRandAugment(), v2.RandAugment()
    height, width = video.shape[-2:]
    magnitudes, signed = SPACE[op]
    bins = magnitudes(31, height, width)
    values = [0.0] if bins is None else [float(m) for m in bins]
    for magnitude in values:
        for sign in (1, -1) if signed else (1,):
            ours = fast._apply_image_or_video_transform(video, op, sign * magnitude, "nearest", fast._fill)
            theirs = reference._apply_image_or_video_transform(video, op, sign * magnitude, "nearest", reference._fill)
            assert type(ours) is tv_tensors.Video
            assert torch.equal(ours, theirs), (op, sign * magnitude)


@pytest.mark.parametrize("factor", [0.0, 0.1, 0.79, 1.0, 1.21, 1.9, 3.0])
def test_sharpness_kernel_matches_torchvision(factor):
    for video in layouts(random_video((4, 3, 23, 31), seed=3)).values():
        assert torch.equal(adjust_sharpness_video(video, factor), F.adjust_sharpness(video, factor))
    tiny = random_video((3, 3, 2, 9))  # torchvision leaves images of side <= 2 as they are
    assert torch.equal(adjust_sharpness_video(tiny, factor), tiny)
    with pytest.raises(ValueError, match="not non-negative"):
        adjust_sharpness_video(tiny, -0.5)


def test_sharpness_keeps_the_borders_and_blurs_the_inside():
    video = random_video((2, 3, 8, 8), seed=4)
    out = adjust_sharpness_video(video, 0.0)  # factor 0: the blurred image itself
    assert torch.equal(out[..., 0, :], video[..., 0, :]) and torch.equal(out[..., :, -1], video[..., :, -1])
    x = video.double()
    blur = x[..., :-2, :-2] + x[..., :-2, 1:-1] + x[..., :-2, 2:] + x[..., 1:-1, :-2] + 5 * x[..., 1:-1, 1:-1]
    blur += x[..., 1:-1, 2:] + x[..., 2:, :-2] + x[..., 2:, 1:-1] + x[..., 2:, 2:]
    assert torch.equal(out[..., 1:-1, 1:-1], (blur / 13).round().to(torch.uint8))


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0, 127.5, 195.49999, 195.5, 200.0, 254.9, 255.0])
def test_solarize_kernel_matches_torchvision(threshold):
    video = random_video((3, 3, 16, 16), seed=5)
    video[0, 0, 0, :4] = torch.tensor([0, 195, 196, 255], dtype=torch.uint8)
    assert torch.equal(solarize_video(video, threshold), F.solarize(video, threshold))
    with pytest.raises(TypeError, match="Threshold"):
        solarize_video(video, 256.0)


def test_equalize_kernel_matches_torchvision():
    for video in layouts(awkward_video()).values():
        assert torch.equal(equalize_video(video), F.equalize(video))
    skewed = (random_video((2, 3, 32, 32), seed=6).float() ** 2 / 255).to(torch.uint8)  # most pixels dark
    assert torch.equal(equalize_video(skewed), F.equalize(skewed))
    assert not torch.equal(equalize_video(skewed), skewed)


def test_other_inputs_go_to_torchvision():
    fast, reference = VideoRandAugment(), v2.RandAugment()
    floats = tv_tensors.Video(random_video((2, 3, 12, 12)).float() / 255)
    image = tv_tensors.Image(random_video((3, 12, 12)))
    for inpt in (floats, image):
        for op, magnitude in (("Sharpness", 0.5), ("Rotate", 20.0), ("Solarize", 0.4), ("Equalize", 0.0)):
            if op == "Equalize" and inpt.is_floating_point():
                continue
            ours = fast._apply_image_or_video_transform(inpt, op, magnitude, "nearest", fast._fill)
            theirs = reference._apply_image_or_video_transform(inpt, op, magnitude, "nearest", reference._fill)
            assert type(ours) is type(inpt) and torch.equal(ours, theirs)


def test_a_custom_fill_uses_torchvision_geometry():
    video = tv_tensors.Video(random_video((2, 3, 12, 12)))
    fast, reference = VideoRandAugment(fill=128), v2.RandAugment(fill=128)
    ours = fast._apply_image_or_video_transform(video, "Rotate", 25.0, "nearest", fast._fill)
    theirs = reference._apply_image_or_video_transform(video, "Rotate", 25.0, "nearest", reference._fill)
    assert torch.equal(ours, theirs) and (ours == 128).any() and not fast._maps


def torchvision_pipeline(crop_size, randaug_n, randaug_m, random_erasing):
    steps = [v2.RandomResizedCrop(crop_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
    if randaug_n:
        steps.append(v2.RandAugment(num_ops=randaug_n, magnitude=randaug_m))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(MEAN), std=list(STD))]
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    compose = v2.Compose(steps)
    return lambda frames: _finish(compose(_to_video(frames)))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("recipe", [(4, 7, 0.25), (2, 9, 1.0), (0, 9, 0.0)])
def test_train_transform_matches_the_torchvision_pipeline(layout, recipe):
    clip = random_video((6, 3, 40, 56), seed=7)  # (T, C, H, W)
    # channels_last: decoded (T, H, W, 3) frames as they come from the decoders; contiguous: a (T, 3, H, W) clip
    frames = clip.permute(0, 2, 3, 1).contiguous() if layout == "channels_last" else clip.permute(0, 2, 3, 1)
    assert _to_video(frames).is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    fast = TrainClipTransform(32, randaug_n=recipe[0], randaug_m=recipe[1], random_erasing=recipe[2])
    reference = torchvision_pipeline(32, *recipe)
    outputs = set()
    for seed in range(12):
        torch.manual_seed(seed)
        ours = fast(frames)
        torch.manual_seed(seed)
        theirs = reference(frames)
        assert ours.shape == (3, 6, 32, 32) and ours.dtype == torch.float32 and ours.is_contiguous()
        assert torch.equal(ours, theirs), seed
        outputs.add(ours.sum().item())
    assert len(outputs) == 12  # the seeds do draw different augmentations
