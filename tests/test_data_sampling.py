"""Frame-index samplers: dense (Kinetics), segment (SSv2), padding of short videos, the temporal control switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videorec.data.sampling import apply_temporal_control, dense_indices, segment_indices


def test_dense_train_is_strided_and_inside_the_video():
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        idx = dense_indices(100, 8, 4, generator=gen)
        assert np.all(np.diff(idx) == 4) and idx[0] >= 0 and idx[-1] <= 99
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 100 - 29  # every start in [0, N - span] is reachable


def test_dense_eval_clips_are_uniformly_spaced_and_distinct():
    clips = [dense_indices(100, 8, 4, clip_index=k, num_clips=4) for k in range(4)]
    assert [c[0] for c in clips] == [0, 24, 47, 71]
    assert clips[-1][-1] == 99
    assert dense_indices(100, 8, 4, clip_index=0, num_clips=1)[0] == (100 - 29) // 2  # one clip: the centre


@pytest.mark.parametrize("num_video_frames", [1, 5, 28])
def test_short_video_is_padded_by_repeating_frames(num_video_frames):
    idx = dense_indices(num_video_frames, 8, 4, generator=torch.Generator().manual_seed(0))
    assert len(idx) == 8 and idx.min() == 0 and idx.max() == num_video_frames - 1
    assert np.all(np.diff(idx) >= 0)  # in order, frames repeated rather than dropped
    seg = segment_indices(num_video_frames, 8, clip_index=0)
    assert len(seg) == 8 and seg.max() <= num_video_frames - 1 and np.all(np.diff(seg) >= 0)


def test_segment_train_takes_one_frame_per_segment():
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = segment_indices(64, 8, generator=gen)
        assert np.array_equal(idx // 8, np.arange(8))  # frame k lies in segment k


def test_segment_eval_views_differ_and_single_view_takes_the_middle():
    assert segment_indices(64, 8, clip_index=0, num_clips=1).tolist() == list(range(4, 64, 8))
    views = [segment_indices(64, 8, clip_index=k, num_clips=3) for k in range(3)]
    assert len({tuple(v) for v in views}) == 3
    assert views[0].tolist() == list(range(2, 64, 8)) and views[2].tolist() == list(range(6, 64, 8))


def test_temporal_controls():
    idx = np.arange(10, 26, 2)
    assert np.array_equal(apply_temporal_control(idx, "none"), idx)
    rep = apply_temporal_control(idx, "repeat", generator=torch.Generator().manual_seed(1))
    assert len(set(rep.tolist())) == 1 and rep[0] in idx
    assert apply_temporal_control(idx, "repeat", train=False).tolist() == [idx[4]] * 8
    shuf = apply_temporal_control(idx, "shuffle", generator=torch.Generator().manual_seed(1))
    assert sorted(shuf.tolist()) == idx.tolist() and shuf.tolist() != idx.tolist()
    with pytest.raises(ValueError, match="temporal_control"):
        apply_temporal_control(idx, "reverse")
