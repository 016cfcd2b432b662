"""Evaluation entry point: ``python -m videorec.eval ckpt_path=<checkpoint> [data=... data.root=...]``.

Runs the test split of the data (the data configuration stored in the checkpoint unless ``data=`` is given) and
reports clip-level metrics (each view on its own) and video-level metrics (softmax probabilities of every clip x crop
view of a video averaged). Writes ``eval.json`` and ``predictions.csv`` (one row per video) into the run directory.

Examples:
    python -m videorec.eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m videorec.eval ckpt_path=mvit_b.ckpt data=k400 data.root=/data/k400 data.eval_clips=5 data.eval_crops=1
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from .utils.run import data_overrides_on_stored, load_for_inference, print_summary, write_json

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
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_model_summary=False)
    (clip,) = trainer.test(model, datamodule=datamodule, verbose=False)
    video = model.video_results
    result = {
        "clip_acc1": float(clip["test/acc1"]),
        "clip_acc5": float(clip["test/acc5"]),
        "clip_loss": float(clip["test/loss"]),
        "video_acc1": video["video_acc1"],
        "video_acc5": video["video_acc5"],
        "num_videos": video["num_videos"],
        "num_clips": video["num_clips"],
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
    shown = {k: v for k, v in result.items() if k not in ("checkpoint", "model")}
    print_summary(
        f"videorec eval: {model.hparams.model_name}",
        shown,
        {"eval.json": str(output_dir / "eval.json"), "predictions": str(output_dir / "predictions.csv")},
    )
    return result


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="eval")
def _main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """The command line: ``data.<key>=`` overrides apply on top of the checkpoint's stored data configuration."""
    sys.argv = [sys.argv[0], *data_overrides_on_stored(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
