"""Helpers that write real video files for tests (H.264 mp4 and VP9 webm via PyAV, plus broken files).

Other test modules import these; keep the signatures stable.

    write_video(path, frames, fps=25, codec="h264")      frames: (T, H, W, 3) uint8
    moving_square_frames(num_frames, height, width)      a recognisable test pattern, (T, H, W, 3) uint8
    frame_id_frames(num_frames, height, width)           frame t is a flat grey of level 8 * t + 4
    decoded_frame_index(frame)                           the index back from a decoded frame_id_frames frame
    write_truncated(path, source)                        the first half of a valid file's bytes
    write_zero_bytes(path) / write_text_as_video(path)   empty file / a text file with a video extension
    write_kinetics_dataset(root, class_names, fmt=...)   a tiny Kinetics tree with lists in any supported format
    write_ssv2_dataset(root)                             a tiny SSv2 download (official json files, VP9 webm)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "decoded_frame_index",
    "frame_id_frames",
    "moving_square_frames",
    "write_kinetics_dataset",
    "write_ssv2_dataset",
    "write_text_as_video",
    "write_truncated",
    "write_video",
    "write_zero_bytes",
]

_CODECS = {"h264": "libx264", "vp9": "libvpx-vp9", "mpeg4": "mpeg4"}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25,
    codec: str = "h264",
    *,
    crf: int = 23,
    audio: bool = False,
    rotation: int = 0,
    frame_times: Sequence[float] | None = None,
    gop: int | None = None,
) -> Path:
    """Encode `frames` into a real video file.

    Args:
        path: output file; the container follows the suffix (.mp4, .webm, .mkv, .avi).
        frames: (T, H, W, 3) uint8 RGB. Odd sizes are written as yuv444p (H.264) so nothing is cropped.
        fps: nominal frame rate.
        codec: "h264", "vp9" or "mpeg4".
        crf: constant rate factor (quality) for h264 / vp9.
        audio: add a silent-ish AAC (mp4) or Opus (webm) track of the same duration.
        rotation: display-matrix rotation in degrees counter-clockwise (0, 90, 180, 270); the stored frames are
            `frames` rotated back, so a decoder that honours the flag returns `frames`.
        frame_times: per-frame presentation times in seconds for a variable-frame-rate file.
        gop: keyframe interval (the encoder's default when None).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if rotation % 360:
        # The decoder rotates by `rotation` degrees counter-clockwise for display: store the inverse.
        frames = np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))
    _, height, width, _ = frames.shape
    odd = height % 2 or width % 2
    with av.open(str(path), "w") as container:
        rate = Fraction(fps).limit_denominator(1000)
        stream = container.add_stream(_CODECS[codec], rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if (odd and codec == "h264") else "yuv420p"
        if codec == "h264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        elif codec == "vp9":
            stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
        if gop is not None:
            stream.options = {**stream.options, "g": str(gop)}
        time_base = Fraction(1, 1000) if frame_times is not None else 1 / rate
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if rotation % 360:
            stream.set_display_rotation(rotation % 360)
        audio_stream = None
        if audio:
            audio_codec = "libopus" if path.suffix == ".webm" else "aac"
            audio_stream = container.add_stream(audio_codec, rate=48000)
            audio_stream.layout = "mono"
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = round(frame_times[t] / time_base) if frame_times is not None else t
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            duration = len(frames) / float(fps) if frame_times is None else frame_times[-1] + 1 / float(fps)
            _write_audio(container, audio_stream, duration)
    return path


def _write_audio(container: av.container.OutputContainer, stream: av.AudioStream, duration: float) -> None:
    samples_per_frame, rate = 960, 48000
    total = int(duration * rate)
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)).astype(np.float32)
    for start in range(0, total, samples_per_frame):
        chunk = tone[start : start + samples_per_frame]
        if len(chunk) < samples_per_frame:
            chunk = np.pad(chunk, (0, samples_per_frame - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def moving_square_frames(num_frames: int = 16, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A coloured square moving right over a noisy background: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    side = max(2, min(height, width) // 4)
    for t in range(num_frames):
        x = int((width - side) * t / max(num_frames - 1, 1))
        y = (height - side) // 2
        frames[t, y : y + side, x : x + side] = (230, 60, 30)
    return frames


def frame_id_frames(num_frames: int = 16, height: int = 32, width: int = 32) -> np.ndarray:
    """Frame t is a flat grey image of level 8 * t (t < 32), so a decoded frame tells its index."""
    levels = (8 * np.arange(num_frames) + 4).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def decoded_frame_index(frame: np.ndarray) -> int:
    """Inverse of `frame_id_frames` for a decoded (H, W, 3) or (3, H, W) frame."""
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - 4) / 8))


def write_truncated(path: str | Path, source: str | Path, fraction: float = 0.5) -> Path:
    """Write the first `fraction` of the bytes of a valid video: a download cut short."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_zero_bytes(path: str | Path) -> Path:
    """An empty file with a video name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text_as_video(path: str | Path) -> Path:
    """A text file named like a video (an HTML error page saved as .mp4)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html><body>404 Not Found</body></html>\n" * 20)
    return path


def write_kinetics_dataset(
    root: str | Path,
    class_names: Sequence[str],
    per_class: int = 2,
    splits: Sequence[str] = ("train", "val"),
    num_frames: int = 12,
    size: tuple[int, int] = (32, 40),
    fmt: str = "space",
) -> Path:
    """A tiny Kinetics-style dataset: `root/<split>/<class>/<name>.mp4` plus list files in format `fmt`.

    fmt: "space" (`<path> <label>` in `<split>.txt`), "comma" (`path,label` in `<split>.csv`), "official"
    (`label,youtube_id,time_start,time_end,split` in `<split>.csv`, files named `<id>_<start:06d>_<end:06d>.mp4`)
    or "tree" (no list: the `<split>/` class folders themselves).
    """
    root = Path(root)
    for split in splits:
        lines = ["label,youtube_id,time_start,time_end,split"] if fmt == "official" else []
        for label, name in enumerate(class_names):
            for i in range(per_class):
                video_id = f"{name[:3]}{split[:2]}{i:03d}x"
                stem = f"{video_id}_{10 * i:06d}_{10 * i + 10:06d}" if fmt == "official" else f"{video_id}"
                rel = Path(split) / name.replace(" ", "_") / f"{stem}.mp4"
                frames = moving_square_frames(num_frames, *size, seed=label * 100 + i)
                write_video(root / rel, frames, fps=10)
                if fmt == "space":
                    lines.append(f"{rel} {label}")
                elif fmt == "comma":
                    lines.append(f"{rel},{label}")
                elif fmt == "official":
                    lines.append(f'"{name}",{video_id},{10 * i},{10 * i + 10},{split}')
        if fmt != "tree":
            suffix = ".txt" if fmt == "space" else ".csv"
            (root / f"{split}{suffix}").write_text("\n".join(lines) + "\n")
    return root


SSV2_TEMPLATES = [
    "Pushing something from left to right",
    "Pushing something from right to left",
    "Holding something next to something",
    "Turning the camera left while filming something",
]
SSV2_ENTRY = {  # the official schema of the train / validation json entries
    0: ("Pushing [something] from left to right", ["pen"]),
    1: ("Pushing [something] from right to left", ["cup"]),
    2: ("Holding [something] next to [something]", ["potato", "bottle"]),
    3: ("Turning the camera left while filming [something]", ["car"]),
}


def write_ssv2_dataset(root: str | Path, per_class: int = 2, frames_too: bool = False) -> Path:
    """A fake Something-Something v2 download: the three official json files under `labels/` and VP9 webm videos
    under `20bn-something-something-v2/` (and their frames as jpgs under `frames/<id>/` with `frames_too`)."""
    root = Path(root)
    labels = root / "labels"
    labels.mkdir(parents=True)
    (labels / "something-something-v2-labels.json").write_text(
        json.dumps({t: str(i) for i, t in enumerate(SSV2_TEMPLATES)})
    )
    video_id = 1000
    for split, count in (("train", per_class), ("validation", 1)):
        entries = []
        for template, objects in SSV2_ENTRY.values():
            for _ in range(count):
                video_id += 1
                frames = moving_square_frames(20, 32, 40, seed=video_id)
                write_video(root / "20bn-something-something-v2" / f"{video_id}.webm", frames, fps=12, codec="vp9")
                if frames_too:
                    import torch
                    from torchvision.io import write_jpeg

                    folder = root / "frames" / str(video_id)
                    folder.mkdir(parents=True)
                    for i, frame in enumerate(frames):
                        write_jpeg(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), str(folder / f"{i:06d}.jpg"))
                label_text = template.replace("[something]", objects[0])
                entries.append(
                    {"id": str(video_id), "label": label_text, "template": template, "placeholders": objects}
                )
        (labels / f"something-something-v2-{split}.json").write_text(json.dumps(entries))
    return root
