"""Count and report videos skipped because they could not be decoded."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric

__all__ = ["SkippedVideos", "SkippedVideosCallback"]


class SkippedVideos(Metric):
    """The distinct skipped videos of one stage and epoch, over every rank.

    The "<path>: <reason>" names are kept as UTF-8 bytes (one name a line, each byte a float so that the state has the
    metric's dtype on every rank, empty ones included) in a list state that torchmetrics concatenates over ranks when
    the metric is computed. So the names travel with the other epoch metrics, in the
    collective that Lightning issues for every logged metric in the same order on every rank, whichever rank asks
    first (rank 0's progress bar asks earlier than the others). ``compute`` returns the count, prints the names on
    rank 0 and keeps them in ``names``.

    Args:
        stage: "train", "val" or "test", for the message.
        max_names: at most this many names are printed (the count is always complete).
    """

    full_state_update = False

    def __init__(self, stage: str, max_names: int = 50) -> None:
        super().__init__()
        self.stage, self.max_names = stage, max_names
        self.add_state("encoded", default=[], dist_reduce_fx="cat")
        self.names: list[str] | None = None  # those of the last computed epoch

    def update(self, names: list[str]) -> None:
        if names:
            data = bytearray("".join(f"{name}\n" for name in names).encode())
            self.encoded.append(torch.frombuffer(data, dtype=torch.uint8).to(self.device, self.dtype))

    def compute(self) -> torch.Tensor:
        parts = self.encoded if isinstance(self.encoded, list) else [self.encoded]  # a tensor once synchronised
        text = b"".join(bytes(p.to(torch.uint8).tolist()) for p in parts).decode(errors="replace")
        names = list(dict.fromkeys(line for line in text.split("\n") if line))  # a video counts once
        self.names = names
        if names:
            shown = "\n  ".join(names[: self.max_names])
            more = f"\n  ... and {len(names) - self.max_names} more" if len(names) > self.max_names else ""
            rank_zero_info(f"[{self.stage}] skipped {len(names)} undecodable video(s) this epoch:\n  {shown}{more}")
        return torch.tensor(float(len(names)), device=self.device)


class SkippedVideosCallback(L.Callback):
    """Log `<stage>/skipped_videos` (distinct videos over all ranks) each epoch and print the skipped files' names.

    The names travel in the batch: the collate puts the "<path>: <reason>" strings of undecodable videos under
    `batch["skipped"]`. This callback adds them to a `SkippedVideos` metric in `on_*_batch_end` and logs the metric
    for the epoch, as the LightningModule logs its accuracies: this callback itself never communicates, so no rank
    can wait in it for a collective that another rank issues elsewhere. A video counts once per epoch however many of
    its views failed, on however many ranks.

    Args:
        max_names: at most this many names are printed per epoch (the count is always complete).
    """

    STAGES = ("train", "val", "test")

    def __init__(self, max_names: int = 50) -> None:
        self.max_names = max_names
        self.metrics = {stage: SkippedVideos(stage, max_names) for stage in self.STAGES}

    @property
    def last_counts(self) -> dict[str, int]:
        """Skipped videos of each stage's last computed epoch (the same on every rank)."""
        return {stage: len(m.names) for stage, m in self.metrics.items() if m.names is not None}

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, batch: Any) -> None:
        if trainer.sanity_checking:
            return
        metric = self.metrics[stage]
        if metric.device != pl_module.device:
            metric.to(pl_module.device)
        metric.update(list(batch.get("skipped", ())) if isinstance(batch, dict) else [])
        pl_module.log(
            f"{stage}/skipped_videos",
            metric,
            on_step=False,
            on_epoch=True,
            batch_size=1,
            metric_attribute=f"skipped_videos_{stage}",
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics["train"].reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics["val"].reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics["test"].reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(trainer, pl_module, "train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, "val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, "test", batch)
