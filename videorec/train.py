"""Training entry point: ``python -m videorec.train [hydra overrides]``.

Examples:
    python -m videorec.train                                   # uniformer_tiny on the embedded synthetic dataset
    python -m videorec.train model=mvit_b data=k400 data.root=/data/k400 trainer=ddp
    python -m videorec.train experiment=demo data.temporal_control=shuffle   # the temporal control run
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    ThroughputMonitor,
)
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from .lit import VideoClassifier
from .models import is_model, list_models
from .models.registry import UnknownModelError
from .utils.run import (
    finish_loggers,
    flat_metrics,
    instantiate_callbacks,
    instantiate_loggers,
    print_summary,
    wandb_run_dir,
    write_json,
)

__all__ = ["train", "build_module", "main"]

log = logging.getLogger("videorec")


def _as_dict(node: Any) -> dict[str, Any]:
    """A config node (or None) as a plain dict."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def build_module(cfg: DictConfig, num_classes: int, class_names: list[str] | None) -> VideoClassifier:
    """The LightningModule from ``cfg.model`` (backbone) and ``cfg.module`` (optimisation), as plain data."""
    name = cfg.model.name
    if not is_model(name):
        raise UnknownModelError(f"model={name}: unknown model. Known models: {', '.join(list_models())}")
    backbone_kwargs: dict[str, Any] = {}
    # the clip geometry follows the data unless the model config pins it
    if cfg.get("data") is not None:
        if cfg.data.get("num_frames") is not None:
            backbone_kwargs["num_frames"] = int(cfg.data.num_frames)
        if cfg.data.get("crop_size") is not None:
            backbone_kwargs["img_size"] = int(cfg.data.crop_size)
    backbone_kwargs.update(_as_dict(cfg.model.get("kwargs")))
    module_kwargs = _as_dict(cfg.get("module"))
    return VideoClassifier(
        model_name=name,
        num_classes=num_classes,
        backbone_kwargs=backbone_kwargs,
        pretrained=cfg.model.get("pretrained"),
        inflate=cfg.model.get("inflate"),
        grad_checkpointing=bool(cfg.model.get("grad_checkpointing", False)),
        class_names=list(class_names) if class_names is not None else None,
        data_config=OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None,
        **module_kwargs,
    )


def _run_checkpoints(run_dir: Path) -> list[Path]:
    """The resumable checkpoints of a run folder: ``last.ckpt`` and Lightning's SLURM requeue checkpoints."""
    return [p for p in (run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]


def _newest(found: list[Path], how: str) -> str:
    newest = max(found, key=lambda p: p.stat().st_mtime)
    log.info("ckpt_path=%s: resuming from %s", how, newest)
    return str(newest)


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """A checkpoint file to resume from.

    ``last``: the newest ``last.ckpt`` or SLURM requeue checkpoint of this run folder, else of the runs beside it.
    ``auto``: the newest of this run folder if there is one, else none (a job script's first start and its requeues).
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        found = _run_checkpoints(output_dir)
        if not found:
            log.info("ckpt_path=auto: no checkpoint in %s yet, starting afresh", output_dir)
            return None
        return _newest(found, ckpt_path)
    if ckpt_path == "last":
        found = _run_checkpoints(output_dir) or [
            p for run in output_dir.parent.iterdir() for p in _run_checkpoints(run)
        ]
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no last.ckpt or hpc_ckpt_*.ckpt in {output_dir} or any run beside it in "
                f"{output_dir.parent}. Pass run_name=<the run> or ckpt_path=<file>."
            )
        return _newest(found, ckpt_path)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(ckpt_path)


def scale_batch_and_lr(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """The per-device batch, gradient accumulation and learning rate of a run, as the papers state them.

    With ``global_batch_size`` set, ``data.batch_size`` is the largest per-device batch to use: the accumulation is the
    fewest steps that reach the global batch, and the global batch must divide evenly. With ``base_lr`` set, the
    learning rate scales linearly from ``base_batch_size``: ``lr = base_lr * global_batch_size / base_batch_size``.
    """
    cap = int(cfg.data.batch_size)
    global_batch = cfg.get("global_batch_size")
    if global_batch is None:
        per_device, accumulate = cap, int(cfg.trainer.get("accumulate_grad_batches") or 1)
        global_batch = per_device * world_size * accumulate
    else:
        global_batch = int(global_batch)
        accumulate = max(1, math.ceil(global_batch / (world_size * cap)))
        per_device, rest = divmod(global_batch, world_size * accumulate)
        if rest or per_device == 0:
            raise ValueError(
                f"global_batch_size={global_batch} does not split over {world_size} device(s) x {accumulate} "
                f"accumulation step(s) with at most data.batch_size={cap} clips per device; pick a global batch that "
                "is a multiple of the world size"
            )
    lr = float(cfg.module.lr)
    if cfg.get("base_lr") is not None:
        lr = float(cfg.base_lr) * global_batch / float(cfg.base_batch_size)
    return {
        "world_size": world_size,
        "global_batch_size": global_batch,
        "per_device_batch_size": per_device,
        "accumulate_grad_batches": accumulate,
        "base_lr": cfg.get("base_lr"),
        "base_batch_size": cfg.get("base_batch_size") if cfg.get("base_lr") is not None else None,
        "lr": lr,
    }


def _plugins(cfg: DictConfig) -> list[Any]:
    """Lightning's SLURM environment when running under SLURM: auto-requeue on SIGUSR1 (see scripts/slurm/)."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=bool(cfg.get("auto_requeue", True)), requeue_signal=signal.SIGUSR1)]
    return []


def batch_clips(batch: dict[str, Any]) -> int:
    """Clips in a training batch (``ThroughputMonitor``'s batch size)."""
    return int(batch["video"].shape[0])


def _switch_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks that top-level switches turn on: weight EMA (``ema_decay``), throughput and MFU."""
    out: list[L.Callback] = []
    if cfg.get("ema_decay") is not None:
        out.append(EMAWeightAveraging(decay=float(cfg.ema_decay)))
    if cfg.get("throughput"):
        out.append(ThroughputMonitor(batch_size_fn=batch_clips, window_size=int(cfg.get("throughput_window", 50))))
    return out


def _enabled(callbacks: list[L.Callback], trainer_cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The callbacks that the Trainer switches leave on: ``enable_progress_bar=false`` drops the progress bar,
    ``enable_model_summary=false`` the summary, ``enable_checkpointing=false`` the checkpoints (Lightning refuses
    the switch and the callback together); the learning-rate monitor needs a logger."""
    off: list[type] = [] if has_logger else [LearningRateMonitor]
    if trainer_cfg.get("enable_progress_bar") is False:
        off.append(ProgressBar)
    if trainer_cfg.get("enable_model_summary") is False:
        off.append(ModelSummary)
    if trainer_cfg.get("enable_checkpointing") is False:
        off.append(ModelCheckpoint)
    return [c for c in callbacks if not isinstance(c, tuple(off))]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit a model as configured, evaluate the best checkpoint, write ``metrics.json`` and return the metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    callbacks = instantiate_callbacks(cfg.get("callbacks")) + _switch_callbacks(cfg)
    loggers = instantiate_loggers(cfg.get("logger"))
    try:
        callbacks = _enabled(callbacks, cfg.trainer, bool(loggers))
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=_plugins(cfg) or None
        )
        scaled = scale_batch_and_lr(cfg, trainer.num_devices * trainer.num_nodes)
        with open_dict(cfg):
            cfg.data.batch_size = scaled["per_device_batch_size"]
            cfg.trainer.accumulate_grad_batches = scaled["accumulate_grad_batches"]
            cfg.module.lr = scaled["lr"]
        trainer.accumulate_grad_batches = scaled["accumulate_grad_batches"]
        print_summary("videorec: batch and learning rate", scaled, {})

        datamodule: L.LightningDataModule = instantiate(cfg.data)
        model = build_module(cfg, datamodule.num_classes, getattr(datamodule, "class_names", None))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for lg in loggers:
            lg.log_hyperparams(resolved)
        if rank_zero_only.rank == 0:
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

        trainer.fit(model, datamodule=datamodule, ckpt_path=_resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))
        metrics = flat_metrics(trainer.callback_metrics)

        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
        if not trainer.fast_dev_run and best:
            # the final validation metrics are those of the best checkpoint
            (val,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
            metrics.update(flat_metrics(val))
        if cfg.get("test"):
            (test,) = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update(flat_metrics(test))  # logged from the views of every rank, so complete under ddp_spawn too

        # every rank holds the same synchronised numbers; each says so in its own log, rank 0 writes them
        log.info("rank %d final metrics: %s", trainer.global_rank, json.dumps(metrics, sort_keys=True))
        metrics_path = output_dir / "metrics.json"
        write_json(metrics_path, metrics)
        wandb_dir = wandb_run_dir(loggers)
        extra = {
            "best checkpoint": best or None,
            "metrics": str(metrics_path),
            "run directory": str(output_dir),
            "W&B run folder": wandb_dir,
        }
        if wandb_dir and os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
            extra["W&B"] = f"offline run; upload it with: wandb sync {wandb_dir}"
    finally:
        finish_loggers(loggers)  # also after a failure, so that what was logged is complete
    shown = {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "train/acc", "train/loss_epoch"))}
    print_summary(f"videorec: {cfg.model.name} on {OmegaConf.select(cfg, 'data.name', default='data')}", shown, extra)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://videorec.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "val/acc1")  # what Hydra sweepers optimise


if __name__ == "__main__":
    main()
