"""Training callbacks of the run itself (the data layer's live in ``videorec.data``)."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint"]


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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # saved at the train epoch end, which follows the epoch's validation
