"""Evaluation entry point: ``python -m videorec.eval ckpt_path=<checkpoint> [data=... data.root=...]``.

Runs the test split of the data (the data configuration stored in the checkpoint unless ``data=`` is given) and
reports clip-level metrics (each view on its own) and video-level metrics (the softmax probabilities of every clip x
crop view of a video averaged, or their maximum with ``ensemble=max``), the mean class accuracy, the throughput and
the skipped videos. Writes ``eval.json``, ``predictions.csv`` (one row per video), ``per_class.csv`` (support,
accuracy and the most-confused class of each class), ``confusion_matrix.png`` (``top_confusions.csv`` above 100
classes) and ``per_class_accuracy.png`` into the run directory. ``split=val`` evaluates the validation videos with the
same views; ``logger=wandb`` logs the numbers, the pictures and the per-class table to W&B.

The figures are the same at any world size (one process, torchrun, ``trainer=ddp_cpu``): every view is gathered
from the ranks and counted once, by its (video, clip, crop) index, at clip level as at video level.

Examples:
    python -m videorec.eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m videorec.eval ckpt_path=mvit_b.ckpt data=k400 data.root=/data/k400 data.eval_clips=5 data.eval_crops=1
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .data import SkippedVideosCallback
from .lit import aggregate_views
from .utils.plots import confusion_matrix
from .utils.run import (
    finish_loggers,
    instantiate_loggers,
    load_for_inference,
    main_on_stored_data,
    print_summary,
    wandb_run_dir,
    write_json,
)

__all__ = ["EvalReport", "evaluate", "main"]

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
    confusion = confusion_matrix(videos["label"], videos["probs"].argmax(1), num_classes)
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


class EvalReport(L.Callback):
    """Builds ``eval.json``, ``predictions.csv``, ``per_class.csv`` and the pictures where the test results are.

    It runs at the end of the test loop, in every process that ran it: the module has gathered the views of all ranks
    by then, so each process computes the same report, and rank 0 writes the files. Under ``strategy=ddp_spawn`` the
    test runs in spawned processes and the launching process's module never sees the views: ``evaluate`` then reads
    the report back from ``eval.json``. The throughput counts the test loop (decoding, forward passes, gathering),
    not the start of the processes.
    """

    def __init__(self, output_dir: Path, ensemble: str, info: dict[str, Any], pictures: bool = True) -> None:
        self.output_dir, self.ensemble, self.info, self.pictures = output_dir, ensemble, info, pictures
        self.result: dict[str, Any] | None = None
        self.files: dict[str, str] = {}
        self._start = 0.0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        if not pl_module.test_views:
            raise RuntimeError(
                f"no video of the {self.info['split']} split could be decoded: nothing to evaluate (see the "
                "skipped videos above)"
            )
        video = pl_module.video_results  # the mean ensemble, aggregated by the module
        if self.ensemble != "mean":
            video = aggregate_views(**pl_module.test_views, ensemble=self.ensemble)
        hp = pl_module.hparams
        names = list(hp.get("class_names") or [str(i) for i in range(hp.num_classes)])
        per_class = per_class_report(video["videos"], names, hp.num_classes)
        supported = [row["accuracy"] for row in per_class if row["support"]]
        skipped = next((cb for cb in trainer.callbacks if isinstance(cb, SkippedVideosCallback)), None)
        skipped_names = (skipped.metrics["test"].names if skipped is not None else None) or []
        result = {
            "clip_acc1": video["clip_acc1"],  # every view scored on its own
            "clip_acc5": video["clip_acc5"],
            "clip_loss": video["clip_loss"],
            "video_acc1": video["video_acc1"],  # the views of each video combined (ensemble)
            "video_acc5": video["video_acc5"],
            "mean_class_acc": sum(supported) / len(supported) if supported else float("nan"),
            "ensemble": self.ensemble,
            "num_videos": video["num_videos"],
            "num_clips": video["num_clips"],
            "videos_per_s": video["num_videos"] / seconds,
            "views_per_s": video["num_clips"] / seconds,
            "skipped_videos": len(skipped_names),
            "skipped": skipped_names,
            "world_size": trainer.world_size,
            **self.info,
        }
        self.result = result
        out = self.output_dir
        self.files = {"eval.json": str(out / "eval.json")}
        if trainer.is_global_zero:
            records = getattr(trainer.datamodule, "records", {}).get("test") or []
            paths = [str(r.path) for r in records] or None
            _write_predictions(out / "predictions.csv", video["videos"], names, paths)
            _write_per_class(out / "per_class.csv", per_class)
            self.files.update({"predictions": str(out / "predictions.csv"), "per class": str(out / "per_class.csv")})
            if self.pictures:
                self.files.update(write_pictures(video["videos"], per_class, names, out))
            result["files"] = self.files
            write_json(out / "eval.json", result)  # last: its presence means the report is complete


def write_pictures(
    videos: dict[str, Any], per_class: list[dict[str, Any]], class_names: list[str], folder: Path
) -> dict[str, str]:
    """``confusion_matrix.png`` (``top_confusions.csv`` above 100 classes) and ``per_class_accuracy.png``."""
    from .utils import plots  # matplotlib is imported when the pictures are drawn

    confusion = plots.confusion_matrix(videos["label"], videos["probs"].argmax(1), len(class_names))
    matrix, _ = plots.write_confusions(confusion, class_names, folder)
    chart = plots.plot_per_class_accuracy(per_class, folder / "per_class_accuracy.png")
    key = "confusion matrix" if matrix.suffix == ".png" else "top confusions"
    return {key: str(matrix), "per-class accuracy": str(chart)}


def log_report(cfg: DictConfig, result: dict[str, Any], folder: Path) -> str | None:
    """Log the report to the experiment loggers of ``logger=`` (rank 0 only): the numbers of ``eval.json`` as
    ``eval/<key>``; to W&B also the pictures as ``wandb.Image`` and ``per_class.csv`` (and ``top_confusions.csv``)
    as ``wandb.Table``. Returns the W&B run folder, if there is one."""
    if rank_zero_only.rank != 0 or not cfg.get("logger"):
        return None
    loggers = instantiate_loggers(cfg.logger)
    try:
        numbers = {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            lg.log_metrics(numbers, step=0)
            if isinstance(lg, WandbLogger):
                for name in ("confusion_matrix", "per_class_accuracy"):
                    if (folder / f"{name}.png").is_file():
                        lg.log_image(f"eval/{name}", [str(folder / f"{name}.png")], step=0)
                for name in ("per_class", "top_confusions"):
                    if (folder / f"{name}.csv").is_file():
                        with open(folder / f"{name}.csv", newline="") as f:
                            rows = list(csv.reader(f))
                        lg.log_table(f"eval/{name}", columns=rows[0], data=rows[1:], step=0)
            lg.finalize("success")
        return wandb_run_dir(loggers)
    finally:
        finish_loggers(loggers)


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
    ensemble = str(cfg.get("ensemble", "mean"))
    if ensemble not in ("mean", "max"):
        raise ValueError(f"ensemble={ensemble}: use mean or max")
    if split == "val":  # the validation videos, with the evaluation views of the test split
        datamodule.set_records("test", datamodule.load_records("val"))
    if datamodule.num_classes != model.hparams.num_classes:
        raise ValueError(
            f"data has {datamodule.num_classes} classes but {ckpt} was trained for {model.hparams.num_classes}"
        )
    info = {"checkpoint": str(ckpt.resolve()), "model": model.hparams.model_name, "split": split}
    info.update({k: data_cfg.get(k) for k in ("eval_clips", "eval_crops") if data_cfg.get(k) is not None})
    report = EvalReport(output_dir, ensemble, info, pictures=bool(cfg.get("pictures", True)))
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[SkippedVideosCallback(), report], enable_model_summary=False
    )
    if trainer.is_global_zero:
        (output_dir / "eval.json").unlink(missing_ok=True)  # a stale report must not be read back as this one
    trainer.test(model, datamodule=datamodule, verbose=False)
    result = report.result
    if result is None:  # the test ran in spawned processes (ddp_spawn): rank 0 wrote the report there
        path = output_dir / "eval.json"
        if not path.is_file():
            raise RuntimeError(f"the test processes ended without writing {path}")
        result = json.loads(path.read_text())
    files = dict(result.pop("files", None) or report.files)
    files["W&B run folder"] = log_report(cfg, result, output_dir)
    shown = {k: v for k, v in result.items() if k not in ("checkpoint", "model", "skipped")}
    print_summary(f"videorec eval: {result['model']}", shown, files)
    return result


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="eval")
def _main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    """The command line: ``data.<key>=`` overrides apply on top of the checkpoint's stored data configuration."""
    main_on_stored_data(_main)


if __name__ == "__main__":
    main()
