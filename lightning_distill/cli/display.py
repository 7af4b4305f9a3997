"""What a training run shows while it runs: Lightning's rich progress bar and model summary, made to say what
vdistill users need (the loss and val GAP; the model's FLOPs per video)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.evaluation.flops import inference_macs_by_part


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without the logger's run id (``v_num``, a W&B id such as ``thy6``), so the
    loss and validation GAP the modules put on the bar are what it shows."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class ModelSummary(RichModelSummary):
    """Lightning's model summary with the predicting network's FLOPs per video (at the frames it reads): its encoder's
    and head's in the FLOPs column, their sum as "Total FLOPs". Lightning's own count needs an example input and
    cannot see fused LSTM kernels, so it reported 0; ``evaluation/flops.py`` counts LSTMs analytically. Other rows
    (a Parallel module's teacher, the metrics) are left blank: they are not part of what predicts."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flops: dict[str, int] = {}
        network = pl_module.inference_network() if hasattr(pl_module, "inference_network") else None
        if network is not None:  # None: a module that reads per video (EarlyExitModule) has no one network
            frames = network.frames_per_video(getattr(trainer.datamodule, "max_frames", MAX_FRAMES))
            encoder_macs, head_macs = inference_macs_by_part(network.encoder, network.head, frames)
            self._flops = {"encoder": 2 * encoder_macs, "head": 2 * head_macs}
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data: list, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        names = dict(summary_data)["Name"]
        flops = [get_human_readable_count(self._flops[name]) if name in self._flops else "" for name in names]
        summary_data = [(column, flops if column == "FLOPs" else values) for column, values in summary_data]
        RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                   total_training_modes, total_flops=sum(self._flops.values()), **kwargs)
