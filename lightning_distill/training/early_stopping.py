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
    counts the student's epochs only. A student whose join is decided during the fit
    (``DistillModule(student_start_patience=P)``) needs ``after_student_joins=True`` instead.

    Args:
        monitor: the metric to watch, e.g. ``val/student/gap``.
        start_epoch: the first epoch (0-based) whose end is checked.
        after_student_joins: also wait until the module's student has joined (``DistillModule.student_started``).
        **kwargs: further ``EarlyStopping`` arguments (``mode``, ``patience``, ``min_delta``, ...).
    """

    def __init__(self, monitor: str, start_epoch: int = 0, after_student_joins: bool = False, **kwargs: Any) -> None:
        if start_epoch < 0:
            raise ConfigError(f"DelayedEarlyStopping start_epoch={start_epoch} must be >= 0")
        super().__init__(monitor=monitor, **kwargs)
        self.start_epoch = start_epoch
        self.after_student_joins = after_student_joins

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.after_student_joins and not hasattr(pl_module, "student_started"):
            raise ConfigError(
                f"DelayedEarlyStopping after_student_joins is set, but {type(pl_module).__name__} has no student that "
                "joins later: use it with DistillModule, or drop after_student_joins"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watching(trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._watching(trainer, pl_module):
            super().on_validation_end(trainer, pl_module)

    def _watching(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        if trainer.current_epoch < self.start_epoch:
            return False
        return not self.after_student_joins or bool(pl_module.student_started)
