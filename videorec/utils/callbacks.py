"""Training callbacks of the run itself (the data layer's live in ``videorec.data``)."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ..data.datasets import sample_seed

__all__ = ["ExactResume", "LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """Keep ``<dirpath>/last.ckpt`` the latest state of the run, whatever the metrics do.

    It is written at the end of every training epoch (after that epoch's validation), and in between every
    ``every_n_train_steps`` optimiser steps or every ``train_time_interval`` when one is given, so a preempted run loses
    at most that much. Lightning's ``save_last`` of a monitoring checkpoint rewrites ``last.ckpt`` only together with a
    top-k checkpoint, so after an epoch that did not improve the metric "last" would be an older state. Each write is
    atomic (Lightning saves into a temporary file and moves it into place).

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: also save every this many optimiser steps (None: only at epoch ends).
        train_time_interval: also save every this interval, a ``timedelta`` or minutes (None: only at epoch ends).
            At most one of the two.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | float | None = None,
    ) -> None:
        if isinstance(train_time_interval, int | float):
            train_time_interval = timedelta(minutes=train_time_interval)
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every epoch end, whichever step or time trigger is also set (Lightning's triggers are exclusive)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class ExactResume(L.Callback):
    """What a resumed run needs to continue exactly where its checkpoint was taken, whenever that was.

    - The global RNG is seeded before every training step from (seed, step, rank), so the model's own randomness (drop
      path, dropout) depends only on where training is, with no RNG state to save. The datasets seed each clip's
      augmentation by (seed, epoch, index) in the same spirit.
    - A checkpoint holds the train loader's position as of the last completed step. Lightning saves the loader's live
      state, and a checkpoint taken by a signal handler (the SLURM requeue) in the middle of a step would record a batch
      as consumed that the restored loop then trains on again from the next one, skipping a batch.

    Args:
        seed: the run's seed (``seed`` in train.yaml).
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = 0 if seed is None else seed
        self._loader_state: list[dict] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(sample_seed(self.seed, trainer.global_step, trainer.global_rank))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loader = trainer.fit_loop._combined_loader
        self._loader_state = loader._state_dicts() if loader is not None else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loader_state = None  # a new epoch: the live state is the right one until its first step ends

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        fit = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict")
        if self._loader_state and fit is not None and "combined_loader" in fit:
            fit["combined_loader"] = self._loader_state
