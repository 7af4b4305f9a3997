"""``DelayedEarlyStopping``: Lightning's early stopping, counting from a given epoch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_distill.errors import ConfigError
from lightning_distill.training.early_stopping import DelayedEarlyStopping

# A metric that peaks at epoch 0, stalls until epoch 4 (as a late student's GAP, at chance before it joins), then
# improves twice and stalls for good.
SCRIPTED_GAP = [0.5, 0.1, 0.1, 0.1, 0.6, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]


class ScriptedMetric(L.LightningModule):
    """Logs ``val/gap`` from SCRIPTED_GAP, one value per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/gap", SCRIPTED_GAP[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def epochs_trained(stopping: L.Callback) -> int:
    loader = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    trainer = L.Trainer(max_epochs=len(SCRIPTED_GAP), callbacks=[stopping], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(ScriptedMetric(), loader, loader)
    return trainer.current_epoch


def test_checks_start_at_the_start_epoch_and_count_patience_from_there():
    # Plain early stopping keeps epoch 0's 0.5 and stops after epochs 1 and 2 fail to beat it.
    assert epochs_trained(L.pytorch.callbacks.EarlyStopping("val/gap", mode="max", patience=2)) == 3
    # From epoch 3: best 0.1 at 3, then 0.6, 0.7 at 5; epochs 6 and 7 stall, so it stops after 8 epochs.
    assert epochs_trained(DelayedEarlyStopping("val/gap", start_epoch=3, mode="max", patience=2)) == 8


def test_a_negative_start_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match="start_epoch=-1 must be >= 0"):
        DelayedEarlyStopping("val/gap", start_epoch=-1)


def test_waiting_for_a_student_to_join_needs_a_module_with_one():
    stopping = DelayedEarlyStopping("val/gap", after_student_joins=True, mode="max", patience=2)
    with pytest.raises(ConfigError, match="ScriptedMetric has no student that joins later: use it with DistillModule"):
        epochs_trained(stopping)
