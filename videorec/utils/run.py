"""Helpers shared by the entry points: building callbacks and loggers from config, W&B mode, metrics files."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "data_overrides_on_stored",
    "main_on_stored_data",
    "load_for_inference",
    "run_name",
    "default_precision",
    "instantiate_callbacks",
    "instantiate_loggers",
    "wandb_offline_by_default",
    "flat_metrics",
    "write_json",
    "print_summary",
    "wandb_run_dir",
    "finish_loggers",
]

log = logging.getLogger("videorec")


def run_name(explicit: str | None = None) -> str:
    """The name of the run folder: the same in every process of a run and across the requeues of a SLURM job.

    ``explicit`` (the ``run_name=`` key) wins; then the SLURM job (``slurm-<job id>``, ``slurm-<array job>_<task>`` for
    an array task); then torchrun's rendezvous id when one was given (``--rdzv-id``); else the start time, which is
    only shared by processes started in the same second: give ``run_name=`` to a multi-node torchrun without an id.
    """
    if explicit not in (None, "", "null"):
        return str(explicit)
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID") not in (None, "", "none"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def default_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` on a GPU that supports bfloat16 (Ampere and newer), else full ``32-true`` (CPU included)."""
    if str(accelerator) not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"


if not OmegaConf.has_resolver("videorec.precision"):
    # trainer/default.yaml's precision; resolved where the Trainer is built
    OmegaConf.register_new_resolver("videorec.precision", default_precision)

if not OmegaConf.has_resolver("videorec.run_name"):
    # hydra/default.yaml names the run folder with it; registered on import of the entry points' helpers
    OmegaConf.register_new_resolver("videorec.run_name", run_name, use_cache=True)


def _entries(cfg: DictConfig | None, group: str) -> list[tuple[str, DictConfig]]:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"config group '{group}' must be a mapping of name -> {{_target_: ...}}, got {type(cfg)}")
    out = []
    for name, entry in cfg.items():
        if entry is None:
            continue  # disabled with `callbacks.<name>=null`
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(f"{group}.{name}: expected a mapping with a _target_ key")
        out.append((str(name), entry))
    return out


def data_overrides_on_stored(args: list[str]) -> list[str]:
    """Command-line overrides for eval and predict, where ``data.<key>=`` applies on top of the checkpoint's stored
    data configuration: without ``data=<name>`` there is no data node to override, so those keys are added
    (``++data.<key>=``) and ``load_for_inference`` merges them onto the stored configuration."""
    if any(re.match(r"^\+{0,2}data=", arg) for arg in args):
        return args  # data=<name> replaces the stored configuration: its keys exist
    return [f"++{arg}" if re.match(r"^data\.[\w.]+=", arg) else arg for arg in args]


def main_on_stored_data(hydra_main: Callable[[], Any]) -> None:
    """Run an inference entry point's ``@hydra.main`` function with ``data.<key>=`` overrides that apply on top of the
    checkpoint's stored data configuration (see :func:`data_overrides_on_stored`)."""
    sys.argv = [sys.argv[0], *data_overrides_on_stored(sys.argv[1:])]
    hydra_main()


def load_for_inference(cfg: DictConfig) -> tuple[Path, Any, DictConfig]:
    """The checkpoint ``cfg.ckpt_path``, its ``VideoClassifier`` (on the CPU) and the data configuration to use.

    The data configuration is ``cfg.data`` when the command gives ``data=<name>`` (it replaces the stored one), else the
    one the checkpoint was trained with, with any ``data.<key>=`` of the command on top (views, root, lists, workers,
    decoder, ...).
    """
    from ..lit import VideoClassifier  # the LightningModule pulls in the model zoo: only when needed

    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint file")
    model = VideoClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    given = cfg.get("data")
    if given is not None and "_target_" in given:
        return ckpt, model, given
    stored = model.hparams.get("data_config")
    if not stored:
        raise ValueError(f"{ckpt}: the checkpoint stores no data configuration; pass one, e.g. data=k400 data.root=...")
    data = OmegaConf.create(stored)
    if given:
        unknown = sorted(set(given) - set(data))
        if unknown:
            raise ValueError(
                f"data.{unknown[0]}: not a key of the data configuration stored in {ckpt} ({', '.join(sorted(data))})"
            )
        data = OmegaConf.merge(data, given)
    return ckpt, model, data


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return [instantiate(entry) for _, entry in _entries(cfg, "callbacks")]


def wandb_offline_by_default() -> bool:
    """Make W&B run offline unless the user configured it (WANDB_API_KEY or WANDB_MODE). Returns True if offline."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return os.environ.get("WANDB_MODE", "online") in ("offline", "dryrun")
    os.environ["WANDB_MODE"] = "offline"
    return True


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    loggers = []
    for name, entry in _entries(cfg, "logger"):
        target = str(entry["_target_"])
        extra = {}
        if target.endswith("WandbLogger"):
            if wandb_offline_by_default():
                extra["offline"] = True
            Path(entry.get("save_dir") or ".").mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(entry, **extra))
        log.debug("logger %s: %s", name, target)
    return loggers


def wandb_run_dir(loggers: list[Logger]) -> str | None:
    """The local folder of the W&B run (what `wandb sync` takes), if a W&B logger ran on this rank."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            try:
                return str(Path(lg.experiment.dir).parent)
            except Exception:  # noqa: BLE001 - disabled run on non-zero ranks
                return None
    return None


def finish_loggers(loggers: list[Logger]) -> None:
    """Close a W&B run so its summary and files are written (an offline run is then complete for `wandb sync`)."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Tensors and numbers as plain floats, sorted by key (non-finite values kept as strings for JSON)."""
    out: dict[str, Any] = {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)):
            out[key] = float(value) if math.isfinite(value) else str(value)
    return out


@rank_zero_only
def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@rank_zero_only
def print_summary(title: str, metrics: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """A rich table of the final metrics and where things were written."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    for key, value in extra.items():
        if value:
            console.print(f"[bold]{key}:[/bold] {value}")
