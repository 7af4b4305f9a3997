"""A classifier trained on its labels alone: the teacher (all frames) or a from-scratch k-frame baseline."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_distill.data.batch import VideoBatch
from lightning_distill.data.samplers import AllFramesSampler, FrameSampler
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead
from lightning_distill.training.losses import ClassificationLoss, DistillLoss
from lightning_distill.training.module import VideoClassifierModule, loss_log_names, save_plain_hyperparameters
from lightning_distill.training.outputs import ModelOutput


class TeacherModule(VideoClassifierModule):
    """Encoder + head trained with L_CE on the frames ``sampler`` picks (the view named "teacher").

    With ``AllFramesSampler`` this is the paper's teacher (the skyline a student distils from); with a k-frame
    sampler (``UniformSampler(k)``, ``RandomSampler(k)``, ...) it is the paper's baseline trained from scratch
    on k frames. Paper defaults for H-RNN: Adam lr 1e-3, ``ExponentialLR`` gamma 0.95 per epoch.

    Args:
        encoder: frames -> video representation.
        num_classes: C, linked from the data module.
        sampler: the frames the model sees; default: ``AllFramesSampler`` (the teacher).
        head: builds the classifier as ``head(encoder.output_dim, num_classes)``, e.g. ``MoEHead`` with
            ``init_args: {num_mixtures: 2}``.
        optimizer: builds the optimiser from the parameters.
        lr_scheduler: builds a per-epoch learning-rate schedule, or None for a constant rate.
        train_sampler: the frames of training batches; default: ``sampler``. ``RandomSampler(k)`` under a
            ``UniformSampler(k)`` trains on new frames every epoch and is tested on Uniform-k frames.
    """

    evaluated_roles = ("teacher",)
    predicting_role = "teacher"

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        sampler: FrameSampler | None = None,
        head: Callable[[int, int], ClassifierHead] = LogisticHead,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        train_sampler: FrameSampler | None = None,
    ) -> None:
        # Defaults filled in the call, not in ``sampler``: save_plain_hyperparameters reads the arguments as given.
        super().__init__(
            encoder, num_classes, head, optimizer, lr_scheduler, sampler or AllFramesSampler(), train_sampler
        )
        save_plain_hyperparameters(self)
        self.criterion = DistillLoss({"ce": ClassificationLoss()})

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        return {"teacher": self.own_sampler(stage)}

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        return {"teacher": self(batch.views["teacher"])}

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        return loss_log_names(self.criterion(outputs["teacher"], None, labels))
