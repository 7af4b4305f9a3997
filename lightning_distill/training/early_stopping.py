"""Early stopping that starts watching at a given epoch: for a metric that cannot improve before then."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from lightning_distill.errors import ConfigError


class DelayedEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping``, with its checks (and its patience count) starting at ``start_epoch``.

    A Parallel student that joins late (``DistillModule(student_start_epoch=N)``) has a validation GAP that cannot
    improve for its first N epochs; plain early stopping would stop it before it starts once N reaches the
    patience. With ``start_epoch=N`` the first check is the one after the student's first epoch, so the patience
    counts the student's epochs only.

    Args:
        monitor: the metric to watch, e.g. ``val/student/gap``.
        start_epoch: the first epoch (0-based) whose end is checked.
        **kwargs: further ``EarlyStopping`` arguments (``mode``, ``patience``, ``min_delta``, ...).
    """

    def __init__(self, monitor: str, start_epoch: int = 0, **kwargs: Any) -> None:
        if start_epoch < 0:
            raise ConfigError(f"DelayedEarlyStopping start_epoch={start_epoch} must be >= 0")
        super().__init__(monitor=monitor, **kwargs)
        self.start_epoch = start_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_validation_end(trainer, pl_module)
