"""Decode only the frames a clip needs, by index, with PyAV (default), decord or torchcodec, or from a frame folder.

`read_frames(path, choose_indices, decoder)` opens a video, asks `choose_indices(num_video_frames)` which frames
it wants, and returns them as a uint8 tensor (T, H, W, 3). Frames stay uint8 until the transform. Rotation flags
are honoured by every backend (decord and torchcodec apply the display matrix; the PyAV path rotates itself).
Anything that goes wrong raises `VideoDecodeError` naming the file; the dataset turns that into a skipped sample.

With `device="cuda"` (`data.decode_device=cuda`, torchcodec only) the frames are decoded by NVDEC and returned on the
current CUDA device. A file decoded on the CPU instead (torchcodec's own CPU fallback, or the fallback decoder after
torchcodec failed) is logged once with the reason and counted in `cpu_fallbacks()`; its frames still go to the GPU.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DECODERS",
    "DECODE_DEVICES",
    "VideoDecodeError",
    "check_decode_device",
    "check_decoder",
    "cpu_fallbacks",
    "describe_failure",
    "read_frames",
]

DECODERS = ("decord", "pyav", "torchcodec")
DECODE_DEVICES = ("cpu", "cuda")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

IndexFn = Callable[[int], np.ndarray]

log = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video that cannot be read: missing, empty, truncated or not a video."""


def check_decoder(decoder: str) -> None:
    """Fail early, with a clear message, when a decoder is unknown or cannot be loaded."""
    if decoder not in DECODERS:
        raise ValueError(f"data.decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "torchcodec":
        try:
            _load_torchcodec()
        except Exception as err:  # ImportError, or OSError / RuntimeError when FFmpeg's shared libraries are missing
            raise RuntimeError(
                "data.decoder=torchcodec needs the torchcodec package and FFmpeg's shared libraries (libavcodec etc., "
                "e.g. `pip install torchcodec` and `apt-get install ffmpeg`); loading it failed: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                "Use data.decoder=decord or pyav."
            ) from err


def check_decode_device(decoder: str, device: str) -> None:
    """Fail early when `data.decode_device` cannot be honoured: GPU decoding is NVDEC through torchcodec."""
    if device not in DECODE_DEVICES:
        raise ValueError(f"data.decode_device must be one of {DECODE_DEVICES}, got {device!r}")
    if device == "cpu":
        return
    if decoder != "torchcodec":
        raise ValueError(
            f"data.decode_device={device} decodes with NVDEC through torchcodec: set data.decoder=torchcodec "
            f"(data.decoder is {decoder!r}), or data.decode_device=cpu"
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"data.decode_device={device} needs a CUDA device and torch finds none (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); use data.decode_device=cpu"
        )


_CPU_FALLBACKS: dict[str, str] = {}


def cpu_fallbacks() -> dict[str, str]:
    """{path: reason} of the files that `device="cuda"` decoded on the CPU in this process."""
    return dict(_CPU_FALLBACKS)


def _report_cpu_fallback(path: str, reason: str) -> None:
    if path not in _CPU_FALLBACKS:
        _CPU_FALLBACKS[path] = reason
        count = len(_CPU_FALLBACKS)
        log.warning("%s: decoded on the CPU, not the GPU: %s (%d such file(s) so far)", path, reason, count)


def _load_torchcodec() -> None:
    """Import torchcodec and load its FFmpeg libraries; raises what went wrong. Since 0.17, `import torchcodec` succeeds
    without FFmpeg (its image decoders need none) and only the first video decoder fails: ask it to load them now."""
    from torchcodec._core import ops
    from torchcodec.decoders import VideoDecoder  # noqa: F401  (older versions raise here)

    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        try:
            getattr(ops, "load_core_libraries", lambda: None)()  # raises; its message lists every version tried
        except Exception as err:
            raise OSError("found no FFmpeg shared libraries of a version torchcodec supports") from err
        raise OSError("torchcodec could not load FFmpeg's shared libraries")


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


# Open a container from its header alone: FFmpeg's stream probing otherwise decodes several frames of every file (six
# of a stream without B-frames, about 10 ms at 720p) to learn what the header already says. Containers whose streams
# only show up in packets (MPEG transport streams, ...) are opened again with the full probe.
_HEADER_ONLY = {"probesize": "32", "analyzeduration": "0"}


# Containers whose packets carry no presentation order: AVI's index holds decode order only, so with B-frames the
# i-th smallest packet timestamp is not the i-th frame shown. Their frames are counted as they come out of the decoder.
_PTS_IN_DECODE_ORDER = {"avi"}


def _open_pyav(path: str, threads: int):
    """(container, stream) of the first video stream, decoding on `threads` threads."""
    import av

    container = av.open(path, container_options=_HEADER_ONLY)
    if not container.streams.video or not container.streams.video[0].codec_context.width:
        container.close()
        container = av.open(path)
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    _pyav_configure(stream, threads)
    return container, stream


def _pyav_configure(stream, threads: int) -> None:
    stream.thread_type = "SLICE" if threads == 1 else "AUTO"  # AUTO: frame and slice threads
    stream.codec_context.thread_count = threads


_CONVERSION = {"threads": True}  # False once PyAV turned out to take no `threads` argument (before 13)


def _pyav_frame_array(frame, threads: int = 0) -> np.ndarray:
    """A decoded frame as (H, W, 3) RGB, display rotation applied; the colour conversion runs on `threads` threads
    (PyAV's own default, 0, starts one per core in every worker)."""
    array = None
    if _CONVERSION["threads"]:
        try:
            array = frame.to_ndarray(format="rgb24", threads=threads)
        except TypeError:
            _CONVERSION["threads"] = False
    if array is None:
        array = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        array = np.rot90(array, k=rotation // 90)
    return array


def _read_pyav_seek(container, stream, choose: IndexFn, threads: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Seek to the keyframe before the first wanted frame and decode from there, skipping the non-reference frames
    that are not wanted (no other frame depends on them, so nothing else changes). Only the wanted frames are
    converted to RGB, each straight into its slot of the returned array.

    Frame ``i`` is the packet with the ``i``-th smallest presentation timestamp, read from the packet index (demuxing
    without decoding). Returns ``(indices, frames)``: ``frames`` holds the sorted unique ``indices``' frames, or is
    None when the stream does not allow this (packets without timestamps or with repeated ones, or a seek that
    missed), and the caller decodes from the start instead.
    """
    pts = sorted(packet.pts for packet in container.demux(stream) if packet.size and packet.pts is not None)
    if not pts:
        return None, None
    indices = choose(len(pts))
    unique = np.unique(indices)
    slot_of = {pts[i]: slot for slot, i in enumerate(unique.tolist())}  # timestamp -> row of the output
    if len(slot_of) < len(unique):
        return indices, None
    container.seek(min(slot_of), stream=stream, backward=True, any_frame=False)
    codec = stream.codec_context
    out: np.ndarray | None = None
    filled = np.zeros(len(unique), dtype=bool)
    for packet in container.demux(stream):
        codec.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in slot_of else "NONREF"
        for frame in codec.decode(packet):
            slot = slot_of.get(frame.pts)
            if slot is None:
                continue
            array = _pyav_frame_array(frame, threads)
            if out is None:
                out = np.empty((len(unique), *array.shape), dtype=np.uint8)
            out[slot] = array  # a resolution change mid-stream raises: the caller names the file
            filled[slot] = True
        if filled.all():
            return indices, out
    return indices, None  # the seek landed after a wanted frame, or timestamps did not match


def _read_pyav(path: str, choose: IndexFn, threads: int) -> torch.Tensor:
    container, stream = _open_pyav(path, threads)
    with container:
        if _PTS_IN_DECODE_ORDER.intersection(container.format.name.split(",")):
            indices, frames = None, None
        else:
            indices, frames = _read_pyav_seek(container, stream, choose, threads)
    if frames is not None:
        unique = np.unique(indices)
        frames = torch.from_numpy(frames)
        return frames if np.array_equal(unique, indices) else _gather(unique, frames, indices)
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

    with av.open(path) as container:  # the full probe: this path serves the files the fast one could not read
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
                decoded[i] = _pyav_frame_array(frame, threads)
            if i >= last:
                break
    return indices, decoded


def _read_torchcodec(path: str, choose: IndexFn, threads: int, device: str = "cpu") -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    reader = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact", device=device)
    if device != "cpu":
        status = reader.cpu_fallback  # known at creation for the NVDEC backend, after the first frame for FFmpeg's
        if status:
            _report_cpu_fallback(path, f"torchcodec: {status}")
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
    decoder: str = "pyav",
    fallback: str | None = "decord",
    threads: int = 1,
    device: str = "cpu",
) -> torch.Tensor:
    """Decode the frames `choose_indices(num_video_frames)` names.

    Args:
        path: a video file, or a folder of frame images (extracted frames, sorted by name).
        choose_indices: maps the video's frame count to the (T,) frame indices wanted (repeats allowed).
        decoder: "pyav", "decord" or "torchcodec".
        fallback: a second decoder tried when the first fails; None for none.
        threads: decoding threads (0: FFmpeg's automatic choice, frame threading included). One thread per
            DataLoader worker suits machines where the workers already fill the cores.
        device: "cpu", or "cuda" to decode with NVDEC on the current CUDA device (torchcodec; see
            `check_decode_device`). Frames decoded on the CPU instead are reported (`cpu_fallbacks`) and moved there.

    Returns:
        (T, H, W, 3) uint8 frames, on `device`.

    Raises:
        VideoDecodeError: the path is missing or no decoder can read it; the message names the file.
    """
    path = str(path)
    if device != "cpu":
        device = f"cuda:{torch.cuda.current_device()}"  # each rank decodes on its own GPU
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
        name = reader.__name__[6:]
        try:
            if reader is _read_torchcodec:
                frames = reader(path, choose_indices, threads, device)
            else:
                frames = reader(path, choose_indices, threads)
        except Exception as err:  # decoders raise many types (DECORDError, av.error.*, RuntimeError)
            errors.append(f"{name}: {type(err).__name__}: {str(err).strip().splitlines()[-1:]}")
            continue
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            errors.append(f"{name}: unexpected frame array {tuple(frames.shape)}")
            continue
        if device != "cpu" and frames.device.type == "cpu":
            if reader is not _read_folder:
                _report_cpu_fallback(path, f"{name} after {'; '.join(errors)}" if errors else f"{name} on the CPU")
            frames = frames.to(device)
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
