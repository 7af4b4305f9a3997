"""Logs the trained model's inference cost with the run, so every dashboard row carries its FLOPs."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.evaluation.flops import profile_model


class CostProfileLogger(Callback):
    """At the start of fit, profile the module's inference network at the frames it sees and log
    ``cost/params``, ``cost/macs_per_video``, ``cost/flops_per_video``, ``cost/videos_per_s`` as hyper-parameters.

    Args:
        batch_size: videos per timed forward pass (small: this runs before training, on the training device).
        repeats: timed passes; the cost counts themselves need only one.
    """

    def __init__(self, batch_size: int = 4, repeats: int = 3) -> None:
        self.batch_size = batch_size
        self.repeats = repeats

    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None or not hasattr(pl_module, "inference_network"):
            return
        network = pl_module.inference_network()
        if network is None:  # a module that reads per video (EarlyExitModule) has no one network to time
            return
        frames = network.frames_per_video(getattr(trainer.datamodule, "max_frames", MAX_FRAMES))
        cost = profile_model(
            network.encoder,
            network.head,
            num_frames=frames,
            batch_size=self.batch_size,
            device=pl_module.device,
            warmup=1,
            repeats=self.repeats,
        )
        trainer.logger.log_hyperparams({f"cost/{key}": value for key, value in cost.to_dict().items()})
