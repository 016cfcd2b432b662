"""scripts/prepare_videos.py: a dataset tree re-encoded for training (short side, H.264, no audio), resumable, with the
broken inputs named; once as users run it (a command with its process pool), the rest in this process."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from video_factory import (
    moving_square_frames,
    write_text_as_video,
    write_truncated,
    write_video,
    write_zero_bytes,
)

from videorec.data.decoding import read_frames

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SHORT = 32
# relative path -> (display height, display width, frames) of the valid inputs, and the output's (height, width)
VALID = {
    "train/abseiling/big.mp4": ((48, 64, 12), (32, 42)),  # with an audio track
    "train/air_drumming/small.mp4": ((24, 30, 9), (24, 30)),  # short side below the target: not upsized
    "train/air_drumming/odd.mkv": ((35, 50, 10), (32, 46)),  # odd sides (yuv444p), Matroska
    "val/rotated.mp4": ((48, 64, 8), (32, 42)),  # stored portrait with a 90 degree display rotation
    "val/nested/deeper/tall.mp4": ((64, 40, 7), (52, 32)),  # portrait
}
BROKEN = {
    "train/abseiling/truncated.mp4": "truncated",
    "train/abseiling/zero.mp4": "empty file",
    "train/air_drumming/page.mp4": "not a video container",
}


def _load():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("prepare_videos")


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _streams(path: Path) -> tuple[list[str], av.video.stream.VideoStream]:
    container = av.open(str(path))
    kinds = [stream.type for stream in container.streams]
    video = container.streams.video[0]
    container.close()
    return kinds, video


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for i, (rel, ((h, w, t), _)) in enumerate(VALID.items()):
        frames = moving_square_frames(t, h, w, seed=i)
        write_video(root / rel, frames, fps=10, audio="big" in rel, rotation=90 if "rotated" in rel else 0)
    write_truncated(root / "train/abseiling/truncated.mp4", root / "train/abseiling/big.mp4")
    write_zero_bytes(root / "train/abseiling/zero.mp4")
    write_text_as_video(root / "train/air_drumming/page.mp4")
    (root / "train.txt").write_text("".join(f"{rel} 0\n" for rel in VALID if rel.startswith("train/")))
    return root


@pytest.fixture(scope="module")
def prepared(src, tmp_path_factory):
    dst = tmp_path_factory.mktemp("dst")
    summary = _load().main([str(src), str(dst), "--short-side", str(SHORT), "--workers", "1", "--bench", "0"])
    return dst, summary


def test_target_size_keeps_the_aspect_never_upsizes_and_is_even():
    target_size = _load().target_size
    assert target_size(1280, 720, 320) == (568, 320)
    assert target_size(720, 1280, 320) == (320, 568)  # portrait
    assert target_size(640, 272, 320) == (640, 272)  # already smaller: kept
    assert target_size(175, 143, 320) == (174, 142)  # odd: one pixel less, never more
    assert target_size(340, 340, 320) == (320, 320)
    assert target_size(853, 480, 321) == (568, 320)  # an odd target is rounded down to even


def test_every_valid_input_comes_out_resized_in_place(src, prepared):
    dst, summary = prepared
    assert (summary.found, summary.done, summary.skipped) == (len(VALID) + len(BROKEN), len(VALID), 0)
    for rel, ((_, _, t), (out_h, out_w)) in VALID.items():
        out = dst / rel  # the same relative path and name (.mp4 / .mkv hold H.264)
        kinds, video = _streams(out)
        assert kinds == ["video"], rel  # the audio of big.mp4 dropped
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p", rel
        frames = _frames(out)
        assert frames.shape == (t, out_h, out_w, 3), rel  # the short side asked for (or less), every frame
        assert len(read_frames(out, lambda n: np.arange(n), "pyav", fallback=None)) == t
    assert (dst / "train.txt").read_text() == (src / "train.txt").read_text()  # lists travel with the videos
    assert not list(dst.rglob("*.partial"))


def test_rotation_is_applied_to_the_pixels(src, prepared):
    dst, _ = prepared
    source = moving_square_frames(8, 48, 64, seed=list(VALID).index("val/rotated.mp4"))  # upright, as displayed
    out = _frames(dst / "val/rotated.mp4")
    with av.open(str(dst / "val/rotated.mp4")) as container:
        frame = next(container.decode(video=0))
        assert not (getattr(frame, "rotation", 0) or 0)  # stored upright, no flag left
    expected = F.interpolate(torch.from_numpy(source).permute(0, 3, 1, 2).float(), size=out.shape[1:3], mode="area")
    error = (torch.from_numpy(out).permute(0, 3, 1, 2).float() - expected).abs().mean()
    assert error < 12, error  # the moving square where it is displayed (a transposed image differs by ~40)


def test_broken_inputs_are_named_with_a_reason(prepared):
    dst, summary = prepared
    with open(dst / "broken.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"]
    reasons = dict(rows[1:])
    assert set(reasons) == set(BROKEN) == {rel for rel, _ in summary.broken}
    for rel, why in BROKEN.items():
        assert why in reasons[rel], (rel, reasons[rel])
        assert not (dst / rel).exists()


def test_second_run_skips_finished_outputs_and_redoes_missing_ones(src, tmp_path):
    prepare_videos = _load()
    dst = tmp_path / "dst"
    args = [str(src), str(dst), "--short-side", str(SHORT), "--workers", "1", "--bench", "0", "--preset", "ultrafast"]
    prepare_videos.main(args)
    stamps = {rel: (dst / rel).stat().st_mtime_ns for rel in VALID}
    missing, killed = "train/abseiling/big.mp4", "val/rotated.mp4"
    (dst / missing).unlink()
    # a run killed while writing `killed`: its temporary file, holding half an output, and no output
    partial = dst / "val" / ".rotated.mp4.4242.partial"
    write_truncated(partial, dst / killed)
    (dst / killed).unlink()
    summary = prepare_videos.main(args)
    assert (summary.done, summary.skipped, len(summary.broken)) == (2, len(VALID) - 2, len(BROKEN))
    assert not partial.exists() and not list(dst.rglob("*.partial"))  # the leftover was not taken for an output
    assert _frames(dst / killed).shape[0] == VALID[killed][0][2] and _frames(dst / missing).shape[0] == 12
    for rel, stamp in stamps.items():
        if rel not in (missing, killed):
            assert (dst / rel).stat().st_mtime_ns == stamp, rel  # not rewritten


def test_a_failed_write_leaves_no_output(src, tmp_path, monkeypatch):
    prepare_videos = _load()
    monkeypatch.setattr(prepare_videos, "_count_packets", lambda path: 0)  # the written file does not check out
    result = prepare_videos.prepare_one(str(src), str(tmp_path), "val/rotated.mp4", prepare_videos.Options(32))
    assert result.status == "broken" and "holds 0 frames" in result.reason
    assert list(tmp_path.rglob("*")) == [tmp_path / "val"]  # neither an output nor a temporary file


def test_fps_keep_audio_and_suffixes(tmp_path):
    src = tmp_path / "src"
    write_video(src / "clip.mp4", moving_square_frames(20, 32, 48), fps=10, audio=True)
    # 64 wide: decord misreads frames whose rows are not 64-byte aligned (48 x 3 bytes), whatever the codec
    write_video(src / "videos" / "1001.webm", moving_square_frames(12, 32, 64), fps=12, codec="vp9")
    prepare_videos = _load()
    common = ["--workers", "1", "--bench", "0", "--preset", "ultrafast"]
    half = prepare_videos.main([str(src), str(tmp_path / "half"), "--fps", "5", "--keep-audio", *common])
    assert half.renamed == 1  # the webm, which cannot hold H.264
    kinds, video = _streams(tmp_path / "half" / "clip.mp4")
    assert kinds == ["video", "audio"] and video.average_rate == 5
    assert _frames(tmp_path / "half" / "clip.mp4").shape[0] == 10  # 2 s at 5 frames/s
    assert _frames(tmp_path / "half" / "videos" / "1001.mp4").shape[0] == 5  # 1 s at 5 frames/s
    double = tmp_path / "double"
    prepare_videos.main([str(src), str(double), "--fps", "20", "--keep-ext", *common])
    assert _frames(double / "clip.mp4").shape[0] == 40
    kept = double / "videos" / "1001.webm"  # the SSv2 name kept: H.264 in Matroska
    assert _streams(kept)[1].codec_context.name == "h264" and not (double / "videos" / "1001.mp4").exists()
    for decoder in ("decord", "pyav"):
        assert len(read_frames(kept, lambda n: np.arange(n), decoder, fallback=None)) == 20  # 1 s at 20


def test_command_with_parallel_workers_gives_the_same_outputs(src, prepared, tmp_path):
    serial, _ = prepared
    dst = tmp_path / "parallel"
    command = [sys.executable, str(SCRIPTS / "prepare_videos.py"), str(src), str(dst), "--short-side", str(SHORT)]
    run = subprocess.run(
        [*command, "--workers", "2", "--bench", "2", "--bench-clips", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stdout.split())
    assert f"{len(VALID) + len(BROKEN)}: {len(VALID)} re-encoded, 0 already done, {len(BROKEN)} broken" in out
    assert "size before -> after" in out and "decode before -> after" in out and "clips/s" in out
    assert "train/abseiling/truncated.mp4: truncated" in out
    for rel in VALID:  # the same videos (x264's output is not always bit-identical from run to run, even on one
        # thread, so the pixels are compared within a small tolerance)
        parallel_frames, serial_frames = _frames(dst / rel), _frames(serial / rel)
        assert parallel_frames.shape == serial_frames.shape, rel
        assert np.abs(parallel_frames.astype(int) - serial_frames).mean() < 3, rel
    assert (dst / "broken.csv").read_text() == (serial / "broken.csv").read_text()


def test_non_square_pixels_become_square_without_widening(tmp_path):
    from fractions import Fraction

    path = tmp_path / "src" / "anamorphic.mp4"  # 64x48 stored, pixels twice as wide as high: displayed 128x48
    path.parent.mkdir()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i, array in enumerate(moving_square_frames(6, 48, 64)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    _load().main([str(tmp_path / "src"), str(tmp_path / "dst"), "--short-side", "32", "--workers", "1", "--bench", "0"])
    out = tmp_path / "dst" / "anamorphic.mp4"
    assert _frames(out).shape == (6, 24, 64, 3)  # the 128:48 display aspect, in square pixels, no side enlarged
    assert _streams(out)[1].codec_context.sample_aspect_ratio in (None, 0, 1)
