"""Count and report videos skipped because they could not be decoded."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["SkippedVideosCallback"]


class SkippedVideosCallback(L.Callback):
    """Log `<stage>/skipped_videos` (summed over ranks) each epoch and print the skipped files' names.

    The names travel in the batch: the collate puts the "<path>: <reason>" strings of undecodable videos under
    `batch["skipped"]`; this callback gathers them in `on_*_batch_end`. A video counts once per epoch however many
    views of it failed.

    Args:
        max_names: at most this many names are printed per epoch (the count is always complete).
    """

    STAGES = ("train", "val", "test")

    def __init__(self, max_names: int = 50) -> None:
        self.max_names = max_names
        self.skipped: dict[str, dict[str, None]] = {stage: {} for stage in self.STAGES}  # ordered set per stage
        self.last_counts: dict[str, int] = {}

    def _collect(self, stage: str, batch: Any) -> None:
        if isinstance(batch, dict):
            for name in batch.get("skipped", ()):
                self.skipped[stage][name] = None

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = list(self.skipped[stage])
        self.skipped[stage] = {}
        if trainer.sanity_checking:
            return
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, names)
            names = list(dict.fromkeys(name for part in gathered for name in part))
        self.last_counts[stage] = len(names)
        # Every rank holds the same gathered total: log it without a further reduction.
        pl_module.log(f"{stage}/skipped_videos", torch.tensor(float(len(names))), on_step=False, on_epoch=True)
        if names:
            shown = "\n  ".join(names[: self.max_names])
            more = f"\n  ... and {len(names) - self.max_names} more" if len(names) > self.max_names else ""
            rank_zero_info(f"[{stage}] skipped {len(names)} undecodable video(s) this epoch:\n  {shown}{more}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.skipped["train"] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.skipped["val"] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.skipped["test"] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("test", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")
