"""scripts/bench_pipeline.py --num-samples and --natural: the repeated-augmentation settings timed side by side on a
k400 list built over given videos (here generated ones standing in for the natural-content downloads)."""

from __future__ import annotations

import sys
import types

import pytest
from video_factory import moving_square_frames, write_video

SMALL = ["data.num_frames=8", "data.sampling_rate=2", "data.crop_size=64", "data.batch_size=4"]
FAST = ["--model", "uniformer_tiny", "--workers", "0", "--batches", "2", "--steps", "1", "--warmup", "1"]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    from conftest import load_script

    videos = [write_video(tmp_path / f"v{i}.mp4", moving_square_frames(24, 48, 80, seed=i)) for i in range(2)]
    stub = types.ModuleType("bench_decode")  # what --natural downloads, without the download
    stub.natural_videos = lambda: videos
    monkeypatch.setitem(sys.modules, "bench_decode", stub)
    return load_script("bench_pipeline")


def test_num_samples_settings_are_timed_side_by_side_on_a_list(bench, capsys):
    result = bench.main(
        [
            *SMALL,
            "--natural",
            "--natural-copies",
            "3",
            "--num-samples",
            "1,2",
            "--rounds",
            "2",
            *FAST,
            "--device",
            "cpu",
        ]
    )
    assert [(r["num_samples"], r["workers"]) for r in result["loader"]] == [(1, 0), (2, 0)]
    assert all(r["clips_per_s"] > 0 for r in result["loader"])
    one, two = (r["clips_per_s"] for r in result["loader"])
    assert result["num_samples_ratio"][(2, 0)] == pytest.approx(two / one)
    assert [r["num_samples"] for r in result["reports"]] == [1, 2]
    out = capsys.readouterr().out
    assert "data=k400, 8x64x64 clips, batch 4" in out  # the list was read by the k400 datamodule
    assert "num_samples=2 against 1, 0 worker(s):" in out and "median of 2" in out and "per CPU-second" in out
    assert result["num_samples_cpu_ratio"][(2, 0)] > 0
    assert "bottleneck (num_samples=2): the " in out and "would feed the model" in out


def test_a_num_samples_that_does_not_divide_the_batch_is_refused(bench):
    with pytest.raises(SystemExit, match="--num-samples 3: data.batch_size=4 must be a multiple of it"):
        bench.main([*SMALL, "--natural", "--num-samples", "1,3", *FAST, "--device", "cpu"])
