"""Decode only the frames a clip needs, by index, with decord (default), PyAV or torchcodec, or from a frame folder.

`read_frames(path, choose_indices, decoder)` opens a video, asks `choose_indices(num_video_frames)` which frames
it wants, and returns them as a uint8 tensor (T, H, W, 3). Frames stay uint8 until the transform. Rotation flags
are honoured by every backend (decord and torchcodec apply the display matrix; the PyAV path rotates itself).
Anything that goes wrong raises `VideoDecodeError` naming the file; the dataset turns that into a skipped sample.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["DECODERS", "VideoDecodeError", "check_decoder", "describe_failure", "read_frames"]

DECODERS = ("decord", "pyav", "torchcodec")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

IndexFn = Callable[[int], np.ndarray]


class VideoDecodeError(RuntimeError):
    """A video that cannot be read: missing, empty, truncated or not a video."""


def check_decoder(decoder: str) -> None:
    """Fail early, with a clear message, when a decoder is unknown or cannot be loaded."""
    if decoder not in DECODERS:
        raise ValueError(f"data.decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "torchcodec":
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
        except Exception as err:  # ImportError, or OSError when FFmpeg's shared libraries are missing
            raise RuntimeError(
                "data.decoder=torchcodec needs the torchcodec package and FFmpeg's shared libraries (libavcodec etc., "
                "e.g. `pip install torchcodec` and `apt-get install ffmpeg`); loading it failed: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                "Use data.decoder=decord or pyav."
            ) from err


def _gather(unique: np.ndarray, frames: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """Frames decoded for the sorted unique indices -> frames in the requested order (repeats included)."""
    return frames[torch.from_numpy(np.searchsorted(unique, indices))]


def _read_decord(path: str, choose: IndexFn, threads: int) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    try:
        indices = choose(len(reader))
        unique = np.unique(indices)
        batch = reader.get_batch(unique.tolist())
        # pytorchvideo's decord module switches decord's bridge to torch; accept either kind of array.
        frames = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch.asnumpy())
    finally:
        del reader  # decord's reader grows across get_batch calls: never keep one alive
    return _gather(unique, frames, indices)


def _count_packets(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def _pyav_frame_array(frame) -> np.ndarray:
    array = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        array = np.rot90(array, k=rotation // 90)
    return np.ascontiguousarray(array)


def _pyav_configure(stream, threads: int) -> None:
    stream.thread_type = "SLICE" if threads == 1 else "AUTO"  # AUTO: frame and slice threads
    stream.codec_context.thread_count = threads


def _read_pyav_seek(container, stream, choose: IndexFn) -> tuple[np.ndarray | None, dict[int, np.ndarray] | None]:
    """Seek to the keyframe before the first wanted frame and decode from there, skipping the non-reference frames
    that are not wanted (no other frame depends on them, so nothing else changes).

    Frame ``i`` is the packet with the ``i``-th smallest presentation timestamp, read from the packet index (demuxing
    without decoding). Returns ``(indices, frames)``; ``frames`` is None when the stream does not allow it (packets
    without timestamps, or a seek that missed), and the caller decodes from the start instead.
    """
    pts = sorted(packet.pts for packet in container.demux(stream) if packet.size and packet.pts is not None)
    if not pts:
        return None, None
    indices = choose(len(pts))
    index_of = {p: i for i, p in enumerate(pts)}
    wanted = {pts[i] for i in np.unique(indices).tolist()}
    container.seek(min(wanted), stream=stream, backward=True, any_frame=False)
    codec = stream.codec_context
    decoded: dict[int, np.ndarray] = {}
    for packet in container.demux(stream):
        codec.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
        for frame in codec.decode(packet):
            if frame.pts in wanted:
                decoded[index_of[frame.pts]] = _pyav_frame_array(frame)
        if len(decoded) == len(wanted):
            break
    if len(decoded) < len(wanted):  # the seek landed after a wanted frame, or timestamps did not match
        return indices, None
    return indices, decoded


def _read_pyav(path: str, choose: IndexFn, threads: int) -> torch.Tensor:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        _pyav_configure(stream, threads)
        indices, decoded = _read_pyav_seek(container, stream, choose)
    if decoded is None:
        # `choose` may draw at random: ask it once, and keep its answer when the packet index gave the frame count
        indices, decoded = _read_pyav_sequential(path, choose if indices is None else lambda n: indices, threads)
    if not decoded:
        raise VideoDecodeError(f"{path}: no frame could be decoded")
    available = np.array(sorted(decoded))
    # A header that promised more frames than the stream holds: clamp to the last frame decoded.
    nearest = available[np.clip(np.searchsorted(available, indices), 0, len(available) - 1)]
    return torch.from_numpy(np.stack([decoded[i] for i in nearest.tolist()]))


def _read_pyav_sequential(path: str, choose: IndexFn, threads: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Decode from the first frame, counting frames, until the last wanted one (any container, any timestamps)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        _pyav_configure(stream, threads)
        num_video_frames = stream.frames or _count_packets(path)  # webm headers carry no frame count
        if num_video_frames <= 0:
            raise VideoDecodeError(f"{path}: no video frames")
        indices = choose(num_video_frames)
        wanted = set(indices.tolist())
        last = max(wanted)
        decoded: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                decoded[i] = _pyav_frame_array(frame)
            if i >= last:
                break
    return indices, decoded


def _read_torchcodec(path: str, choose: IndexFn, threads: int) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    reader = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact")
    indices = choose(reader.metadata.num_frames)
    unique = np.unique(indices)
    frames = reader.get_frames_at(unique.tolist()).data
    return _gather(unique, frames, indices)


def _natural_key(name: str) -> list:
    """img_2.jpg before img_10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_folder(path: str, choose: IndexFn, threads: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    names = sorted((n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
    if not names:
        raise VideoDecodeError(f"{path}: frame folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
    indices = choose(len(names))
    unique = np.unique(indices)
    images = [decode_image(read_file(os.path.join(path, names[i])), mode=ImageReadMode.RGB) for i in unique.tolist()]
    frames = torch.stack(images).permute(0, 2, 3, 1)  # (N, 3, H, W) -> (N, H, W, 3)
    return _gather(unique, frames, indices)


_READERS = {"decord": _read_decord, "pyav": _read_pyav, "torchcodec": _read_torchcodec}


def read_frames(
    path: str | Path,
    choose_indices: IndexFn,
    decoder: str = "decord",
    fallback: str | None = "pyav",
    threads: int = 1,
) -> torch.Tensor:
    """Decode the frames `choose_indices(num_video_frames)` names.

    Args:
        path: a video file, or a folder of frame images (extracted frames, sorted by name).
        choose_indices: maps the video's frame count to the (T,) frame indices wanted (repeats allowed).
        decoder: "decord", "pyav" or "torchcodec".
        fallback: a second decoder tried when the first fails (decord rejects a few valid files); None for none.
        threads: decoding threads (0: FFmpeg's automatic choice, frame threading included). One thread per
            DataLoader worker suits machines where the workers already fill the cores.

    Returns:
        (T, H, W, 3) uint8 frames.

    Raises:
        VideoDecodeError: the path is missing or no decoder can read it; the message names the file.
    """
    path = str(path)
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: no such file")
    if os.path.isdir(path):
        readers = [_read_folder]
    else:
        if os.path.getsize(path) == 0:
            raise VideoDecodeError(f"{path}: empty file (0 bytes)")
        readers = [_READERS[decoder]]
        if fallback and fallback != decoder:
            readers.append(_READERS[fallback])
    errors = []
    for reader in readers:
        try:
            frames = reader(path, choose_indices, threads)
        except Exception as err:  # decoders raise many types (DECORDError, av.error.*, RuntimeError)
            errors.append(f"{reader.__name__[6:]}: {type(err).__name__}: {str(err).strip().splitlines()[-1:]}")
            continue
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            errors.append(f"{reader.__name__[6:]}: unexpected frame array {tuple(frames.shape)}")
            continue
        return frames
    raise VideoDecodeError(f"{path}: {describe_failure(path)} ({'; '.join(errors)})")


# Leading bytes of the containers videos come in: (offset, signature).
_CONTAINER_SIGNATURES = (
    (4, b"ftyp"),  # MP4, MOV, M4V, 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"RIFF"),  # AVI
    (0, b"OggS"),  # Ogg
    (0, b"FLV"),  # Flash video
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x47"),  # MPEG transport stream
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
)


def describe_failure(path: str) -> str:
    """What is wrong with a file no decoder could read, in words: "not a video container" (no known container
    signature and FFmpeg cannot open it, e.g. an HTML error page saved as .mp4), "no video stream" (an audio-only
    file), "truncated" (a container that does not open or decode to the end, e.g. a download cut short), or
    "cannot decode" when none of these is the case."""
    import av

    with open(path, "rb") as f:
        head = f.read(16)
    known = any(head[offset : offset + len(sig)] == sig for offset, sig in _CONTAINER_SIGNATURES)
    try:
        container = av.open(path)
    except Exception:  # noqa: BLE001 - FFmpeg's errors: InvalidDataError, EOFError, ...
        return "truncated" if known else "not a video container"
    with container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams})
            return f"no video stream (only {', '.join(kinds)})" if kinds else "no video stream"
        try:
            for _ in container.decode(video=0):
                pass
        except Exception:  # noqa: BLE001
            return "truncated"
    return "cannot decode"
