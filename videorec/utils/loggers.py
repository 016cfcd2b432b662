"""A CSV logger that continues its file: a resumed run, or each process of a `ddp_spawn` run, appends to the run's
`metrics.csv` instead of failing on the columns an earlier process wrote."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger"]


class _ContinuingWriter(ExperimentWriter):
    """Knows the columns of the metrics file as it is on disk when it saves.

    Lightning's writer knows only the columns its own process logged (a writer pickled into a spawned process knows
    those of the parent when it was pickled), so the first save of another process rewrites the file with a header that
    lacks the columns of earlier rows, and fails on them.
    """

    def save(self) -> None:
        if self.metrics and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        super().save()

    def _check_log_dir_exists(self) -> None:  # continuing the file is the point: no "will be deleted" warning
        pass


class CSVLogger(_LightningCSVLogger):
    """Lightning's `CSVLogger`, appending to an existing `metrics.csv` with all of its columns kept."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
