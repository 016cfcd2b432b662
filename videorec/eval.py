"""Evaluation entry point: ``python -m videorec.eval ckpt_path=<checkpoint> [data=... data.root=...]``.

Runs the test split of the data (the data configuration stored in the checkpoint unless ``data=`` is given) and
reports clip-level metrics (each view on its own) and video-level metrics (the softmax probabilities of every clip x
crop view of a video averaged, or their maximum with ``ensemble=max``), the mean class accuracy, the throughput and
the skipped videos. Writes ``eval.json``, ``predictions.csv`` (one row per video) and ``per_class.csv`` (support,
accuracy and the most-confused class of each class) into the run directory. ``split=val`` evaluates the validation
videos with the same views.

Examples:
    python -m videorec.eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m videorec.eval ckpt_path=mvit_b.ckpt data=k400 data.root=/data/k400 data.eval_clips=5 data.eval_crops=1
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from .data import SkippedVideosCallback
from .lit import aggregate_views
from .utils.run import load_for_inference, main_on_stored_data, print_summary, write_json

__all__ = ["evaluate", "main"]

log = logging.getLogger("videorec")


@rank_zero_only
def _write_predictions(path: Path, videos: dict[str, Any], class_names: list[str] | None, paths: list[str] | None):
    names = class_names or []
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_index", "path", "label", "label_name", "pred", "pred_name", "score", "num_views"])
        for i, vid in enumerate(videos["video_index"].tolist()):
            probs = videos["probs"][i]
            pred = int(probs.argmax())
            label = int(videos["label"][i])
            writer.writerow(
                [
                    vid,
                    paths[vid] if paths and vid < len(paths) else "",
                    label,
                    names[label] if label < len(names) else "",
                    pred,
                    names[pred] if pred < len(names) else "",
                    f"{float(probs[pred]):.6f}",
                    int(videos["num_views"][i]),
                ]
            )


def per_class_report(videos: dict[str, Any], class_names: list[str] | None, num_classes: int) -> list[dict[str, Any]]:
    """Per class: its support (videos), video-level top-1 accuracy, and the class its videos are most often mistaken
    for (with how many)."""
    names = class_names or [str(i) for i in range(num_classes)]
    pred = videos["probs"].argmax(1)
    label = videos["label"]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((label, pred), torch.ones_like(label), accumulate=True)
    rows = []
    for k in range(num_classes):
        support = int(confusion[k].sum())
        wrong = confusion[k].clone()
        wrong[k] = 0
        confused = int(wrong.argmax()) if wrong.sum() > 0 else None
        rows.append(
            {
                "class": k,
                "name": names[k],
                "support": support,
                "accuracy": float(confusion[k, k] / support) if support else float("nan"),
                "most_confused_with": names[confused] if confused is not None else "",
                "confused_count": int(wrong.max()) if confused is not None else 0,
            }
        )
    return rows


@rank_zero_only
def _write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on the test split and return the metrics written to ``eval.json``."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    ckpt, model, data_cfg = load_for_inference(cfg)
    datamodule = instantiate(data_cfg)
    split = str(cfg.get("split", "test"))
    if split not in ("test", "val"):
        raise ValueError(f"split={split}: use test or val")
    if split == "val":  # the validation videos, with the evaluation views of the test split
        datamodule.set_records("test", datamodule.load_records("val"))
    if datamodule.num_classes != model.hparams.num_classes:
        raise ValueError(
            f"data has {datamodule.num_classes} classes but {ckpt} was trained for {model.hparams.num_classes}"
        )
    skipped = SkippedVideosCallback()
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[skipped], enable_model_summary=False)
    start = time.perf_counter()
    (clip,) = trainer.test(model, datamodule=datamodule, verbose=False)
    seconds = time.perf_counter() - start
    ensemble = str(cfg.get("ensemble", "mean"))
    video = model.video_results  # the mean ensemble, aggregated by the module
    if ensemble != "mean" and model.test_views:
        video = aggregate_views(**model.test_views, ensemble=ensemble)
    per_class = per_class_report(video["videos"], model.hparams.get("class_names"), model.hparams.num_classes)
    supported = [row["accuracy"] for row in per_class if row["support"]]
    skipped_names = skipped.metrics["test"].names or []
    result = {
        "clip_acc1": float(clip["test/acc1"]),  # every view scored on its own
        "clip_acc5": float(clip["test/acc5"]),
        "clip_loss": float(clip["test/loss"]),
        "video_acc1": video["video_acc1"],  # the views of each video combined (ensemble)
        "video_acc5": video["video_acc5"],
        "mean_class_acc": sum(supported) / len(supported) if supported else float("nan"),
        "ensemble": ensemble,
        "num_videos": video["num_videos"],
        "num_clips": video["num_clips"],
        "videos_per_s": video["num_videos"] / seconds,
        "views_per_s": video["num_clips"] / seconds,
        "skipped_videos": len(skipped_names),
        "skipped": skipped_names,
        "checkpoint": str(ckpt.resolve()),
        "model": model.hparams.model_name,
        "split": split,
    }
    views = {k: data_cfg.get(k) for k in ("eval_clips", "eval_crops") if data_cfg.get(k) is not None}
    result.update(views)
    write_json(output_dir / "eval.json", result)
    records = getattr(datamodule, "records", {}).get("test") or []
    paths = [str(r.path) for r in records] or None
    _write_predictions(output_dir / "predictions.csv", video["videos"], model.hparams.get("class_names"), paths)
    _write_per_class(output_dir / "per_class.csv", per_class)
    shown = {k: v for k, v in result.items() if k not in ("checkpoint", "model", "skipped")}
    print_summary(
        f"videorec eval: {model.hparams.model_name}",
        shown,
        {
            "eval.json": str(output_dir / "eval.json"),
            "predictions": str(output_dir / "predictions.csv"),
            "per class": str(output_dir / "per_class.csv"),
        },
    )
    return result


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="eval")
def _main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """The command line: ``data.<key>=`` overrides apply on top of the checkpoint's stored data configuration."""
    main_on_stored_data(_main)


if __name__ == "__main__":
    main()
