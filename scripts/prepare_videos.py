"""Re-encode a video dataset once for training: a smaller short side, H.264 yuv420p, a settable keyframe interval,
no audio. Decoding a 16x4 training clip then costs a fraction of what it costs on the original files.

    python scripts/prepare_videos.py /data/k400 /data/k400_320 --short-side 320 --workers 16
    python -m videorec.train data=k400 data.root=/data/k400_320           # the list files still work

    python scripts/prepare_videos.py /data/ssv2 /data/ssv2_256 --short-side 256 --keep-ext   # <id>.webm names kept

What it does, for every video under SRC (any nesting; the suffixes videorec reads as videos):

- The output is DST/<the same relative path>. Containers that hold H.264 (.mp4, .m4v, .mov, .mkv, .avi, .flv, .3gp,
  .ts) keep the file name. The others (.webm, .ogv, .mpg, .mpeg) get the suffix --ext (.mp4) - for SSv2 add
  `data.video_suffix=.mp4` - or, with --keep-ext, keep their name and are written as Matroska (WebM is a subset of
  Matroska; every videorec decoder reads a file by its content, not its name). The list and annotation files under
  SRC (.txt, .csv, .json, .lst) are copied alongside, so `data.root=DST` works as `data.root=SRC` did.
- The short side becomes --short-side (the other side keeps the display aspect ratio; both even). A video whose
  short side is already at most that is re-encoded at its own size (rounded down to even), never upsized, so every
  output has the same codec, keyframe interval and no audio. Rotation metadata is applied to the pixels: the output
  is stored upright, without a rotation flag.
- Every decoded frame is kept with its timestamp, so the frame count does not change. With --fps F the output has a
  constant F frames/s: round(duration * F) frames, each the source frame nearest in time (frames dropped or
  repeated).
- Audio is dropped unless --keep-audio (re-encoded to AAC). One FFmpeg/x264 thread per worker (--threads).
- Resumable: an output that exists is finished and skipped. Each output is written to a hidden temporary file
  (`.<name>.<pid>.partial`) in its destination folder, checked (its packet count must equal the frames encoded) and
  only then renamed into place, so a killed run leaves no truncated output; a later run removes the leftover.
- A broken input never stops the run: it is listed with its reason in DST/broken.csv (path,reason; rewritten by
  every run, so it lists the inputs that are still broken) and in the summary.
- The summary gives the total size of the inputs and outputs and the decode speed before and after: 16x4 clips/s
  through `videorec.data.decoding.read_frames` (the training default decoder, one thread) on --bench files (0: skip).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from videorec.data.datasets import VIDEO_SUFFIXES  # imported before the workers fork: they inherit it
from videorec.data.decoding import describe_failure, read_frames
from videorec.data.sampling import dense_indices

# Containers that hold H.264, by suffix: the output keeps the file name.
H264_CONTAINERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".avi": "avi",
    ".flv": "flv",
    ".3gp": "3gp",
    ".ts": "mpegts",
}
LIST_SUFFIXES = (".txt", ".csv", ".json", ".lst")
BROKEN_FILE = "broken.csv"
PARTIAL = ".partial"


@dataclass(frozen=True)
class Options:
    short_side: int = 320
    gop: int | None = 32
    fps: float | None = None
    crf: int = 23
    preset: str = "medium"
    threads: int = 1
    keep_audio: bool = False
    ext: str = ".mp4"
    keep_ext: bool = False


@dataclass
class Result:
    rel: str
    status: str  # "done" (encoded now), "skipped" (finished by an earlier run) or "broken"
    reason: str = ""
    src_bytes: int = 0
    dst_bytes: int = 0
    frames: int = 0
    size: tuple[int, int] = (0, 0)  # (width, height) of the output


class BrokenInput(Exception):
    """The input cannot be re-encoded; the message says why."""


# -- paths ------------------------------------------------------------------------------------------------------------


def output_rel(rel: Path, opts: Options) -> tuple[Path, str]:
    """The output's relative path and container format for input `rel`."""
    suffix = rel.suffix.lower()
    if suffix in H264_CONTAINERS:
        return rel, H264_CONTAINERS[suffix]
    if opts.keep_ext:
        return rel, "matroska"
    return rel.with_suffix(opts.ext), H264_CONTAINERS.get(opts.ext.lower(), "mp4")


def find_files(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """(videos, list files) under `src` as relative paths, sorted; `dst` is left out when it lies inside `src`."""
    videos, lists = [], []
    dst = dst.resolve()
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() != dst)
        for name in sorted(files):
            if name.startswith("."):
                continue
            rel = (here / name).relative_to(src)
            if name.lower().endswith(VIDEO_SUFFIXES):
                videos.append(rel)
            elif name.lower().endswith(LIST_SUFFIXES):
                lists.append(rel)
    return videos, lists


def partial_files(target: Path) -> list[Path]:
    """Temporary files an interrupted run left for `target`."""
    return sorted(target.parent.glob(f".{target.name}.*{PARTIAL}")) if target.parent.is_dir() else []


# -- geometry and time ------------------------------------------------------------------------------------------------


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side `short_side` (never larger than it is) and the aspect ratio kept; even."""
    short, long = min(width, height), max(width, height)
    new_short = max(2, min(short, short_side) // 2 * 2)
    new_long = min(long // 2 * 2, 2 * math.floor(long * new_short / short / 2 + 0.5))
    return (new_long, new_short) if width >= height else (new_short, new_long)


def _slot(time_s: Fraction, fps: Fraction) -> int:
    """Index of the output frame (at `fps`) nearest to a time."""
    return math.floor(time_s * fps + Fraction(1, 2))


# -- encoding ---------------------------------------------------------------------------------------------------------


def _probe(path: str, threads: int) -> tuple[int, int, int]:
    """(stored width, stored height, rotation in degrees) of the first decodable frame."""
    with av.open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            raise BrokenInput("no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""))
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            return frame.width, frame.height, int(getattr(frame, "rotation", 0) or 0) % 360
    raise BrokenInput("no frame could be decoded")


def _display_size(width: int, height: int, rotation: int, sar: Fraction | None) -> tuple[int, int]:
    if sar and sar > 0 and sar != 1:  # non-square pixels: shrink one side to square ones (never widen the other)
        width, height = (width, round(height / sar)) if sar > 1 else (round(width * sar), height)
    return (height, width) if rotation in (90, 270) else (width, height)


class _Encoder:
    """The output side: an H.264 stream (and an AAC one with audio), frames counted."""

    def __init__(self, path: Path, fmt: str, size: tuple[int, int], rate: Fraction, time_base: Fraction, opts: Options):
        self.container = av.open(str(path), "w", format=fmt)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = self.stream.codec_context.time_base = time_base
        options = {"crf": str(opts.crf), "preset": opts.preset, "threads": str(opts.threads)}
        if opts.gop:
            options["g"] = str(opts.gop)
        self.stream.options = options
        self.time_base, self.frames, self.last_pts = time_base, 0, -1
        self.audio = None

    def add_audio(self, rate: int, layout: str) -> None:
        self.audio = self.container.add_stream("aac", rate=rate)
        self.audio.layout = layout

    def video(self, frame: av.VideoFrame, pts: int) -> None:
        pts = max(pts, self.last_pts + 1)  # timestamps must increase (a few files repeat them)
        frame.pts, frame.time_base, self.last_pts = pts, self.time_base, pts
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def audio_frame(self, frame: av.AudioFrame) -> None:
        self.container.mux(self.audio.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        if self.audio is not None:
            self.container.mux(self.audio.encode())
        self.container.close()


def _convert(frame: av.VideoFrame, rotation: int, size: tuple[int, int]) -> av.VideoFrame:
    """Upright, scaled, yuv420p."""
    if rotation:
        array = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90))
        frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    frame = frame.reformat(width=size[0], height=size[1], format="yuv420p", interpolation="BICUBIC")
    frame.pict_type = av.video.frame.PictureType.NONE  # the source's frame types would force x264's (and its GOP)
    return frame


def encode(src: str, dst: Path, fmt: str, opts: Options) -> tuple[int, tuple[int, int]]:
    """Re-encode `src` into `dst` (container `fmt`); returns (frames written, (width, height))."""
    stored_w, stored_h, rotation = _probe(src, opts.threads)
    with av.open(src) as container:
        vin = container.streams.video[0]
        vin.codec_context.thread_count = opts.threads
        sar = vin.codec_context.sample_aspect_ratio
        size = target_size(*_display_size(stored_w, stored_h, rotation, sar), opts.short_side)
        source_rate = Fraction(vin.average_rate or vin.guessed_rate or 25).limit_denominator(1001 * 1000)
        time_base = vin.time_base or Fraction(1, 90000)
        out_rate = Fraction(opts.fps).limit_denominator(1001) if opts.fps else None
        out_time_base = 1 / out_rate if out_rate else time_base
        encoder = _Encoder(dst, fmt, size, out_rate or source_rate, out_time_base, opts)
        ain = container.streams.audio[0] if (opts.keep_audio and container.streams.audio) else None
        if ain is not None:
            encoder.add_audio(ain.rate or 48000, ain.layout.name if ain.layout else "stereo")
        streams = [vin] if ain is None else [vin, ain]
        start: Fraction | None = None
        pending: tuple[av.VideoFrame, Fraction] | None = None  # --fps: the last frame, not yet placed
        next_slot = 0
        try:
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if packet.stream is ain:
                        if start is not None and frame.pts is not None:  # audio before the first video frame: drop
                            t = frame.pts * frame.time_base - start
                            if t >= 0:
                                rate = frame.sample_rate
                                frame.pts, frame.time_base = round(t * rate), Fraction(1, rate)
                                encoder.audio_frame(frame)
                        continue
                    raw = frame.pts if frame.pts is not None else frame.dts
                    t_abs = raw * frame.time_base if raw is not None else Fraction(encoder.frames) / source_rate
                    start = t_abs if start is None else start
                    t = t_abs - start
                    converted = _convert(frame, rotation, size)
                    if out_rate is None:
                        encoder.video(converted, round(t / time_base))
                        continue
                    slot = _slot(t, out_rate)
                    if pending is not None:
                        while next_slot < slot:
                            encoder.video(_copy(pending[0]), next_slot)
                            next_slot += 1
                    pending = (converted, t)
            if pending is not None:  # the last frame lasts one source frame
                end = max(_slot(pending[1] + 1 / source_rate, out_rate), 1)  # round(duration * fps), at least 1
                while next_slot < end:
                    encoder.video(_copy(pending[0]), next_slot)
                    next_slot += 1
        finally:
            encoder.close()
    if encoder.frames == 0:
        raise BrokenInput("no frame could be decoded")
    written = _count_packets(dst)
    if written != encoder.frames:
        raise RuntimeError(f"the output holds {written} frames, {encoder.frames} were encoded")
    return encoder.frames, size


def _copy(frame: av.VideoFrame) -> av.VideoFrame:
    """A frame to encode once more (an encoder owns the frames it is given until it emits them)."""
    return av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)


def _count_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def _reason(src: str, err: BaseException) -> str:
    if isinstance(err, BrokenInput):
        return str(err)
    message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    if os.path.getsize(src) == 0:
        return "empty file (0 bytes)"
    try:
        kind = describe_failure(src)
    except Exception:  # noqa: BLE001 - the reason is best effort
        kind = "cannot decode"
    return f"{kind} ({type(err).__name__}: {message})" if kind != "cannot decode" else f"re-encoding failed ({message})"


def prepare_one(src_root: str, dst_root: str, rel: str, opts: Options) -> Result:
    """Re-encode one video (skipped when its output exists); never raises for a bad input."""
    src = os.path.join(src_root, rel)
    out_rel, fmt = output_rel(Path(rel), opts)
    target = Path(dst_root) / out_rel
    src_bytes = os.path.getsize(src) if os.path.exists(src) else 0
    if target.exists() and target.stat().st_size > 0:
        return Result(rel, "skipped", src_bytes=src_bytes, dst_bytes=target.stat().st_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in partial_files(target):  # a killed run's unfinished write
        leftover.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL}")
    try:
        if src_bytes == 0:
            raise BrokenInput("empty file (0 bytes)")
        frames, size = encode(src, tmp, fmt, opts)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except Exception as err:  # noqa: BLE001 - FFmpeg raises many kinds; each is a broken input, never a stop
        tmp.unlink(missing_ok=True)
        return Result(rel, "broken", reason=_reason(src, err), src_bytes=src_bytes)
    return Result(rel, "done", src_bytes=src_bytes, dst_bytes=target.stat().st_size, frames=frames, size=size)


# -- the run ----------------------------------------------------------------------------------------------------------


def _run_pool(src: Path, dst: Path, rels: list[str], opts: Options, workers: int) -> Iterator[Result]:
    """Results as they complete. At most 2 x workers videos are in flight; if a worker dies (a crash inside FFmpeg),
    the videos it may have held are retried one by one in a fresh process, and the one that kills it again is broken."""
    todo = list(reversed(rels))
    suspects: list[str] = []
    while todo or suspects:
        if suspects:  # alone, in a pool of one: a crash now names the video
            rel = suspects.pop()
            with ProcessPoolExecutor(1) as pool:
                try:
                    yield pool.submit(prepare_one, str(src), str(dst), rel, opts).result()
                except BrokenProcessPool:
                    yield Result(rel, "broken", reason="the decoder crashed (worker process died)")
            continue
        pool = ProcessPoolExecutor(workers)
        running: dict[Future, str] = {}
        try:
            while todo or running:
                while todo and len(running) < 2 * workers:
                    rel = todo.pop()
                    running[pool.submit(prepare_one, str(src), str(dst), rel, opts)] = rel
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    rel = running.pop(future)
                    yield future.result()
        except BrokenProcessPool:
            suspects = list(running.values())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def prepare(src: Path, dst: Path, opts: Options, workers: int, console: Console) -> list[Result]:
    videos, lists = find_files(src, dst)
    dst.mkdir(parents=True, exist_ok=True)
    for rel in lists:  # the lists travel with the videos
        if rel.as_posix() == BROKEN_FILE:
            continue
        target = dst / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)
    rels = [rel.as_posix() for rel in videos]
    results: list[Result] = []
    columns = [TextColumn("re-encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    stream = (
        (prepare_one(str(src), str(dst), rel, opts) for rel in rels)
        if workers <= 1
        else _run_pool(src, dst, rels, opts, workers)
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("re-encoding", total=len(rels))
        for result in stream:
            results.append(result)
            progress.advance(task)
    order = {rel: i for i, rel in enumerate(rels)}
    results.sort(key=lambda r: order[r.rel])
    with open(dst / BROKEN_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([r.rel, r.reason] for r in results if r.status == "broken")
    return results


def default_decoder() -> str:
    """The training default (conf/data/base/loader.yaml)."""
    try:
        from importlib.resources import files

        from omegaconf import OmegaConf

        return str(OmegaConf.load(str(files("videorec.conf").joinpath("data/base/loader.yaml"))).decoder)
    except Exception:  # noqa: BLE001
        return "decord"


def bench(pairs: Sequence[tuple[Path, Path]], decoder: str, clips: int, seed: int = 0) -> tuple[float, float]:
    """16x4 training clips/s (random starts, the same for a file and its output) before and after, one thread.

    Files and their outputs alternate, so both see the same machine load; each is read once untimed first."""
    import torch

    torch.set_num_threads(1)
    seconds = [0.0, 0.0]
    for i, pair in enumerate(pairs):
        for path in pair:
            read_frames(path, lambda n: dense_indices(n, 16, 4, clip_index=0), decoder, threads=1)  # warm up
        for k in range(clips):
            for side, path in enumerate(pair):
                generator = torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + k)
                start = time.perf_counter()
                read_frames(path, lambda n, g=generator: dense_indices(n, 16, 4, generator=g), decoder, threads=1)
                seconds[side] += time.perf_counter() - start
    total = len(pairs) * clips
    return total / seconds[0], total / seconds[1]


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return ""


@dataclass
class Summary:
    found: int
    done: int
    skipped: int
    broken: list[tuple[str, str]] = field(default_factory=list)
    src_bytes: int = 0
    dst_bytes: int = 0
    clips_per_s: tuple[float, float] | None = None
    decoder: str = ""
    renamed: int = 0


def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the dataset as downloaded")
    parser.add_argument("dst", type=Path, help="where the re-encoded copy goes (same relative paths)")
    parser.add_argument("--short-side", type=int, default=320, help="short side of the outputs (never upsized)")
    parser.add_argument("--gop", type=int, default=32, help="keyframe interval in frames (0: x264's default, 250)")
    parser.add_argument("--fps", type=float, default=None, help="constant output frame rate (default: keep frames)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (lower: better, larger)")
    parser.add_argument("--preset", default="medium", help="x264 preset (ultrafast ... veryslow)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel encodes")
    parser.add_argument("--threads", type=int, default=1, help="FFmpeg/x264 threads per worker")
    parser.add_argument("--keep-audio", action="store_true", help="keep the audio (re-encoded to AAC)")
    parser.add_argument("--ext", default=".mp4", help="suffix for inputs whose container cannot hold H.264 (.webm)")
    parser.add_argument("--keep-ext", action="store_true", help="keep every file name (such inputs become Matroska)")
    parser.add_argument("--bench", type=int, default=8, help="files to time decoding on, before and after (0: skip)")
    parser.add_argument("--bench-clips", type=int, default=5, help="timed clips per benchmark file")
    parser.add_argument("--decoder", default=None, help="decoder of the benchmark (default: the training default)")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        parser.error(f"SRC {args.src} is not a folder")
    if args.src.resolve() == args.dst.resolve():
        parser.error("DST must differ from SRC")
    if args.short_side < 2 or args.workers < 1 or args.threads < 0 or (args.fps is not None and args.fps <= 0):
        parser.error("--short-side must be >= 2, --workers >= 1, --threads >= 0 and --fps > 0")
    ext = args.ext if args.ext.startswith(".") else f".{args.ext}"
    if ext.lower() not in H264_CONTAINERS:
        parser.error(f"--ext {args.ext}: not a container that holds H.264 ({', '.join(H264_CONTAINERS)})")
    opts = Options(
        short_side=args.short_side,
        gop=args.gop or None,
        fps=args.fps,
        crf=args.crf,
        preset=args.preset,
        threads=args.threads,
        keep_audio=args.keep_audio,
        ext=ext,
        keep_ext=args.keep_ext,
    )
    console = Console()
    started = time.perf_counter()
    results = prepare(args.src, args.dst, opts, args.workers, console)
    finished = [r for r in results if r.status != "broken"]
    summary = Summary(
        found=len(results),
        done=sum(r.status == "done" for r in results),
        skipped=sum(r.status == "skipped" for r in results),
        broken=[(r.rel, r.reason) for r in results if r.status == "broken"],
        src_bytes=sum(r.src_bytes for r in finished),
        dst_bytes=sum(r.dst_bytes for r in finished),
        decoder=args.decoder or default_decoder(),
        renamed=sum(output_rel(Path(r.rel), opts)[0] != Path(r.rel) for r in finished),
    )
    if args.bench > 0 and finished:
        picks = np.unique(np.linspace(0, len(finished) - 1, min(args.bench, len(finished))).round().astype(int))
        pairs = [(args.src / r.rel, args.dst / output_rel(Path(r.rel), opts)[0]) for r in (finished[i] for i in picks)]
        summary.clips_per_s = bench(pairs, summary.decoder, args.bench_clips)
    _print_summary(summary, args, time.perf_counter() - started, console)
    return summary


def _print_summary(s: Summary, args: argparse.Namespace, seconds: float, console: Console) -> None:
    table = Table(title=f"{args.src} -> {args.dst} (short side {args.short_side}, {seconds:.0f} s)", show_header=False)
    table.add_row("videos", f"{s.found}: {s.done} re-encoded, {s.skipped} already done, {len(s.broken)} broken")
    if s.src_bytes:
        table.add_row(
            "size before -> after",
            f"{_size(s.src_bytes)} -> {_size(s.dst_bytes)} ({s.dst_bytes / s.src_bytes:.2f}x)",
        )
    if s.clips_per_s:
        before, after = s.clips_per_s
        table.add_row(
            "decode before -> after",
            f"{before:.1f} -> {after:.1f} clips/s ({after / before:.2f}x; 16x4 clips, {s.decoder}, one thread, "
            f"{min(args.bench, s.found - len(s.broken))} files)",
        )
    if s.renamed:
        table.add_row("renamed", f"{s.renamed} video(s) now end in {args.ext} (SSv2: data.video_suffix={args.ext})")
    console.print(table)
    if s.broken:
        console.print(f"[bold red]{len(s.broken)} broken input(s)[/] (all in {args.dst / BROKEN_FILE}):")
        for rel, reason in s.broken[:20]:
            console.print(f"  {rel}: {reason}", markup=False, highlight=False)
        if len(s.broken) > 20:
            console.print(f"  ... and {len(s.broken) - 20} more")


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
