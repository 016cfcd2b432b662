"""Build clean list files from a Kinetics or Something-Something v2 download, checking that every video decodes.

Each video is opened and a few frames spread over its whole length (the last included) are decoded, so missing,
empty, truncated and undecodable files are found before training. The good videos go to the new lists, the others
to `<split>_broken.txt` with the reason.

    # Kinetics: any list format videorec reads (official csv, `path label`, `path,label`) or class folders
    python scripts/build_lists.py kinetics --root /data/k400 --out /data/k400/clean
    python scripts/build_lists.py kinetics --root /data/k400 --list train=annotations/train.csv \\
        --list val=annotations/validate.csv --variant k400 --out /data/k400/clean
    # then: python -m videorec.train data=k400 data.root=/data/k400 data.train_list=clean/train.txt ...

    # SSv2: writes filtered copies of the official json files (and the label file) to --out
    python scripts/build_lists.py ssv2 --root /data/ssv2 --out /data/ssv2/clean
    # then: python -m videorec.train data=ssv2 data.root=/data/ssv2 data.labels_dir=clean ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from videorec.data import KineticsDataModule, SSv2DataModule, VideoDecodeError, VideoRecord, read_frames
from videorec.data.ssv2 import PREFIX, SPLIT_FILES


def check_video(path: str, decoder: str = "pyav") -> str | None:
    """None when the video decodes, else the reason it does not."""
    try:
        read_frames(path, lambda n: np.unique(np.linspace(0, n - 1, 4).round().astype(np.int64)), decoder, None)
    except VideoDecodeError as err:
        return str(err)
    except Exception as err:  # anything else a decoder may throw is a broken video too
        return f"{path}: {type(err).__name__}: {err}"
    return None


def check_all(records: list[VideoRecord], decoder: str, workers: int, title: str, console: Console) -> list[str | None]:
    """Check every video with a progress bar; returns the failure reasons (None for good videos), in order."""
    columns = [TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    results: list[str | None] = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(title, total=len(records))
        paths = [r.path for r in records]
        if workers <= 1:
            for path in paths:
                results.append(check_video(path, decoder))
                progress.advance(task)
        else:
            with ProcessPoolExecutor(workers) as pool:  # forked before any decoder thread has started
                for result in pool.map(check_video, paths, [decoder] * len(paths), chunksize=16):
                    results.append(result)
                    progress.advance(task)
    return results


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _write_broken(out: Path, split: str, records: list[VideoRecord], reasons: list[str | None]) -> int:
    broken = [f"{r.path}\t{why}" for r, why in zip(records, reasons, strict=True) if why]
    (out / f"{split}_broken.txt").write_text("\n".join(broken) + ("\n" if broken else ""))
    return len(broken)


def build_kinetics(args: argparse.Namespace, console: Console) -> list[tuple[str, int, int]]:
    lists = dict(item.split("=", 1) for item in args.list)
    dm = KineticsDataModule(
        root=args.root,
        variant=args.variant,
        class_names_file=args.class_names_file,
        train_list=lists.get("train"),
        val_list=lists.get("val"),
        test_list=lists.get("test"),
    )
    root, out = Path(args.root), Path(args.out)
    summary = []
    for split in args.splits:
        source = dm.list_path(split, required=False)
        if source is None or (split == "test" and source == dm.list_path("val", required=False)):
            continue  # no such split (a test split falling back to the val list is not checked twice)
        records = dm.load_records(split)
        reasons = check_all(records, args.decoder, args.workers, f"{split}", console)
        good = [f"{_relative(r.path, root)} {r.label}" for r, why in zip(records, reasons, strict=True) if not why]
        (out / f"{split}.txt").write_text("\n".join(good) + "\n")
        summary.append((split, len(good), _write_broken(out, split, records, reasons)))
    (out / "classes.txt").write_text("\n".join(dm.class_names) + "\n")
    return summary


def build_ssv2(args: argparse.Namespace, console: Console) -> list[tuple[str, int, int]]:
    dm = SSv2DataModule(root=args.root, labels_dir=args.labels_dir, video_dir=args.video_dir, frame_dir=args.frame_dir)
    out = Path(args.out)
    shutil.copy(dm.labels_dir / f"{PREFIX}-labels.json", out / f"{PREFIX}-labels.json")
    summary = []
    for split in ("train", "val"):
        records = dm.load_records(split)
        reasons = check_all(records, args.decoder, args.workers, split, console)
        entries = json.loads(dm.split_files[split].read_text())  # load_records keeps the order of the entries
        kept = [entry for entry, why in zip(entries, reasons, strict=True) if not why]
        (out / SPLIT_FILES[split]).write_text(json.dumps(kept))
        summary.append((split, len(kept), _write_broken(out, split, records, reasons)))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["kinetics", "ssv2"])
    parser.add_argument("--root", required=True, help="dataset root")
    parser.add_argument("--out", help="output folder (default: <root>/lists)")
    parser.add_argument(
        "--decoder",
        default="pyav",
        choices=["decord", "pyav", "torchcodec"],
        help="the decoder training uses (data.decoder)",
    )
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="checking processes")
    kinetics = parser.add_argument_group("kinetics")
    kinetics.add_argument("--variant", default="k400", help="k400 / k700 (shipped class lists), or 'none'")
    kinetics.add_argument("--class-names-file", help="class names, one a line (instead of --variant)")
    kinetics.add_argument("--list", action="append", default=[], metavar="SPLIT=PATH", help="e.g. train=train.csv")
    kinetics.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    ssv2 = parser.add_argument_group("ssv2")
    ssv2.add_argument("--labels-dir", help="folder of the json files (default: <root>/labels)")
    ssv2.add_argument("--video-dir", help="folder of <id>.webm (default: <root>/20bn-something-something-v2)")
    ssv2.add_argument("--frame-dir", help="folder of extracted <id>/ frame folders, checked instead of videos")
    args = parser.parse_args(argv)
    args.variant = None if args.variant in ("none", "") else args.variant
    args.out = args.out or str(Path(args.root) / "lists")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    summary = build_kinetics(args, console) if args.dataset == "kinetics" else build_ssv2(args, console)
    table = Table(title=f"{args.dataset} lists written to {args.out}")
    for column in ("split", "good videos", "broken (see <split>_broken.txt)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, good, broken in summary:
        table.add_row(split, str(good), str(broken))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
