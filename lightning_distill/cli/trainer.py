"""A Trainer with one more verb, ``profile``, so ``vdistill profile`` takes the same config as ``vdistill fit``."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import LightningDataModule, Trainer

from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.evaluation.flops import CostProfile, profile_model
from lightning_distill.evaluation.report import print_metrics
from lightning_distill.training.module import VideoClassifierModule


class VDistillTrainer(Trainer):
    """``lightning.pytorch.Trainer`` plus ``profile``: the inference cost of the configured model."""

    def profile(
        self,
        model: VideoClassifierModule,
        datamodule: LightningDataModule | None = None,
        frames: int | None = None,
        batch_size: int = 32,
        output: str | None = None,
    ) -> CostProfile:
        """Report parameters, multiply-accumulates and FLOPs per video, and measured inference videos/s.

        Args:
            model: the configured module; its inference network is profiled (a student at its k frames).
            datamodule: supplies ``max_frames`` for models that see every frame.
            frames: frames per video to profile at; default: the sampler's k, else the data's max_frames.
            batch_size: videos per timed forward pass.
            output: also write the profile as JSON here.
        """
        network = model.inference_network()
        num_frames = frames or network.frames_per_video(getattr(datamodule, "max_frames", MAX_FRAMES))
        cost = profile_model(
            network.encoder,
            network.head,
            num_frames=num_frames,
            batch_size=batch_size,
            device=self.strategy.root_device,
        )
        summary = cost.to_dict()
        print_metrics(
            {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))},
            title=f"{type(model).__name__} cost at {num_frames} frames per video",
        )
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(summary, indent=2) + "\n")
        if self.logger is not None:
            self.logger.log_hyperparams({f"cost/{k}": v for k, v in summary.items()})
        return cost
