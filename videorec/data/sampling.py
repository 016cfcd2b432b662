"""Frame-index samplers: which frames of a video make a clip.

Every sampler maps a video's frame count to an int64 array of `num_frames` frame indices, so a decoder reads only the
frames a clip needs. A video shorter than the clip is padded by repeating frames (indices spread evenly over what
there is), never dropped.

- Dense sampling (Kinetics, the synthetic set): T frames at stride s. Training takes a random start; evaluation takes
  `num_clips` uniformly spaced starts (one clip: the centre).
- Segment sampling (Something-Something v2): the video is cut into T equal segments with one frame from each: a random
  frame inside each segment for training; for evaluation view k of K, the point (k + 1) / (K + 1) of each segment, so
  a single view takes the segment middles and multi-clip views differ.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TEMPORAL_CONTROLS", "apply_temporal_control", "dense_indices", "segment_indices"]

TEMPORAL_CONTROLS = ("none", "repeat", "shuffle")


def _spread(num_video_frames: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread evenly over a video too short for the clip (frames repeat)."""
    return np.linspace(0, max(num_video_frames - 1, 0), num_frames).round().astype(np.int64)


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    *,
    clip_index: int | None = None,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """T frames at stride s.

    Args:
        num_video_frames: frames in the video (>= 1).
        num_frames: T, frames in the clip.
        sampling_rate: s, the stride between clip frames.
        clip_index: None for a random start (training); else the index of a uniformly spaced evaluation clip.
        num_clips: evaluation clips per video.
        generator: torch RNG for the random start (the global one when None).

    Returns:
        (T,) int64 frame indices.
    """
    span = (num_frames - 1) * sampling_rate + 1
    if num_video_frames < span:
        return _spread(num_video_frames, num_frames)
    slack = num_video_frames - span
    if clip_index is None:
        start = int(torch.randint(slack + 1, (1,), generator=generator))
    elif num_clips == 1:
        start = slack // 2
    else:
        start = round(slack * clip_index / (num_clips - 1))
    return start + sampling_rate * np.arange(num_frames, dtype=np.int64)


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    clip_index: int | None = None,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """One frame from each of T equal segments (TSN / SSv2 sampling).

    Args:
        num_video_frames: frames in the video (>= 1).
        num_frames: T, the number of segments and clip frames.
        clip_index: None for a random frame inside each segment (training); else view k of `num_clips`, which takes
            the point (k + 1) / (num_clips + 1) of every segment.
        num_clips: evaluation views per video.
        generator: torch RNG for training (the global one when None).

    Returns:
        (T,) int64 frame indices.
    """
    seg = num_video_frames / num_frames
    starts = seg * np.arange(num_frames)
    if clip_index is None:
        offsets = torch.rand(num_frames, generator=generator, dtype=torch.float64).numpy() * seg
    else:
        offsets = np.full(num_frames, seg * (clip_index + 1) / (num_clips + 1))
    indices = np.floor(starts + offsets).astype(np.int64)
    return indices.clip(0, num_video_frames - 1)


def apply_temporal_control(
    indices: np.ndarray, control: str, *, generator: torch.Generator | None = None, train: bool = True
) -> np.ndarray:
    """The control switch: destroy the temporal order a model could use.

    Args:
        indices: (T,) frame indices of a clip.
        control: "none"; "repeat" (one frame of the clip T times: random in training, the middle one in evaluation);
            "shuffle" (the clip's frames in a random order).
        generator: torch RNG (seeded per view in evaluation, so evaluation stays deterministic).
        train: training or evaluation.
    """
    if control == "none":
        return indices
    if control == "repeat":
        pick = int(torch.randint(len(indices), (1,), generator=generator)) if train else len(indices) // 2
        return np.full_like(indices, indices[pick])
    if control == "shuffle":
        return indices[torch.randperm(len(indices), generator=generator).numpy()]
    raise ValueError(f"temporal_control must be one of {TEMPORAL_CONTROLS}, got {control!r}")
