"""Prediction on your own videos: ``python -m videorec.predict ckpt_path=<checkpoint> input=<video or folder>``.

Every video is decoded into the evaluation views of the data configuration stored in the checkpoint (uniformly
spaced clips x crops, the geometry the model was trained for), the softmax probabilities of its views are averaged,
and the top-k class names are printed and written to ``predictions.json`` in the run directory. A file that cannot be
decoded is reported by name and skipped. A progress bar counts the videos (``progress=false`` hides it).

Examples:
    python -m videorec.predict ckpt_path=best.ckpt input=clip.mp4
    python -m videorec.predict ckpt_path=best.ckpt input=videos/ topk=3 clips=4 crops=3
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .data.datasets import VIDEO_SUFFIXES, VideoRecord
from .lit import aggregate_views
from .utils.run import load_for_inference, main_on_stored_data, write_json

__all__ = ["predict", "find_videos", "main"]

log = logging.getLogger("videorec")


LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")


def find_videos(source: str | Path) -> list[Path]:
    """A video file; every video file under a folder (recursively, sorted); or the videos a list file names.

    A list file (``.txt``, ``.csv``, ``.lst``) holds one video a line, its path first (relative paths start at the
    list's folder; a label or other columns after a comma, tab or spaces are ignored); blank lines, ``#`` comments, a
    byte-order mark and a header line whose first column is not a file are skipped.
    """
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        return _read_list(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"input={source}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return found
    raise FileNotFoundError(f"input={source}: no such file or folder")


def _read_list(source: Path) -> list[Path]:
    videos = []
    for line in source.read_text(encoding="utf-8-sig").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        whole = Path(text).expanduser()
        if not (whole if whole.is_absolute() else source.parent / whole).is_file():  # else a path, then columns
            text = re.split(r",|\t|\s{2,}|\s(?=\S+$)", text, maxsplit=1)[0].strip().strip('"')
        path = Path(text).expanduser()
        path = path if path.is_absolute() else source.parent / path
        if not videos and path.suffix.lower() not in VIDEO_SUFFIXES and not path.exists():
            continue  # a header such as "path,label"
        videos.append(path)
    if not videos:
        raise FileNotFoundError(f"input={source}: the list names no videos")
    return videos


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Classify every video of ``cfg.input`` with ``cfg.ckpt_path``; returns one entry per video, in input order."""
    ckpt, model, data_cfg = load_for_inference(cfg)
    videos = find_videos(cfg.input)
    model.eval()
    names = model.hparams.get("class_names") or [str(i) for i in range(model.hparams.num_classes)]
    overrides = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "temporal_control": "none"}
    for key, value in (("eval_clips", cfg.clips), ("eval_crops", cfg.crops)):
        if value is not None:
            overrides[key] = int(value)
    datamodule = instantiate(data_cfg, **overrides)
    datamodule.set_records("test", [VideoRecord(str(p), 0) for p in videos])  # the user's files, unlabelled

    device = _device(cfg.device)
    model.to(device)
    views: dict[str, list[torch.Tensor]] = {"probs": [], "video_index": [], "clip_index": [], "crop_index": []}
    skipped: list[str] = []
    loader = datamodule.test_dataloader()
    clips = loader.dataset.num_clips  # the loader's items are (video, clip), video after video
    with _progress(bool(cfg.get("progress", True)) and rank_zero_only.rank == 0) as progress:
        task = progress.add_task(f"predicting on {device.type}", total=len(videos))
        for step, batch in enumerate(loader):
            skipped += batch.get("skipped", [])
            if batch["video"].shape[0]:
                logits = model(batch["video"].to(device))
                views["probs"].append(logits.float().softmax(-1).cpu())
                for key in ("video_index", "clip_index", "crop_index"):
                    views[key].append(batch[key])
            done = min(len(loader.dataset), (step + 1) * loader.batch_size) // clips
            progress.update(task, completed=done)
    # each view of a broken file reports it: keep one line per file
    skipped = list({item.split(": ", 1)[0]: item for item in skipped}.values())
    results: list[dict[str, Any]] = []
    if views["probs"]:
        cat = {k: torch.cat(v) for k, v in views.items()}
        agg = aggregate_views(label=torch.zeros_like(cat["video_index"]), **cat)["videos"]
        k = min(int(cfg.topk), len(names))
        for vid, probs, n in zip(agg["video_index"].tolist(), agg["probs"], agg["num_views"].tolist(), strict=True):
            scores, idx = probs.topk(k)
            results.append(
                {
                    "path": str(videos[vid]),
                    "num_views": n,
                    "top": [
                        {"label": int(i), "name": names[i], "score": float(s)}
                        for s, i in zip(scores.tolist(), idx.tolist(), strict=True)
                    ],
                }
            )
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / "predictions.json"
    write_json(output, {"checkpoint": str(ckpt), "videos": results, "skipped": skipped})
    _show(results, skipped, output)
    return results


def _progress(enabled: bool) -> Progress:
    """A progress bar over the videos (videos done / all, elapsed and remaining time); off with ``progress=false``.
    On a terminal it redraws in place; in a log (no terminal) its final state is printed once."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled)


def _show(results: list[dict[str, Any]], skipped: list[str], path: Path) -> None:
    console = Console()
    table = Table(title="videorec predictions", show_lines=False)
    table.add_column("video")
    table.add_column("top classes (probability)")
    for r in results:
        table.add_row(Path(r["path"]).name, ", ".join(f"{t['name']} ({t['score']:.3f})" for t in r["top"]))
    console.print(table)
    for item in skipped:
        console.print(f"[yellow]skipped[/yellow] {item}")
    console.print(f"[bold]predictions:[/bold] {path}")


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="predict")
def _main(cfg: DictConfig) -> None:
    predict(cfg)


def main() -> None:
    """The command line: ``data.<key>=`` overrides apply on top of the checkpoint's stored data configuration."""
    main_on_stored_data(_main)


if __name__ == "__main__":
    main()
