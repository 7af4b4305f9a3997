"""Frames chosen per video (beyond the paper): a trained student reads a video coarse to fine and stops early.

The paper's students read the same k frames of every video. ``EarlyExitModule`` reads a video in stages of
nested Uniform-k frames (e.g. 6, then the 12 more that make Uniform-18): after each stage the student predicts, and
a small gate, trained with the teacher's guidance, decides per video whether reading the next stage is worth it.
Easy videos stop after a few frames, hard ones read more; a budget of average frames read is spent where it helps.

Nested stages: Uniform-k takes frame ``floor((2i + 1) L / 2k)``; for k' = m k with m odd, Uniform-k' contains every
Uniform-k frame (slot i of k is slot ((2i + 1) m - 1) / 2 of k'), so a later stage re-reads nothing. Stages must
therefore grow by odd factors (6 -> 18 -> 54, 6 -> 30, 2 -> 6 -> 30).

The gate's training signal: per video and stage j, d_j = sum_c (P_T,c - P_j,c)^2 (``distance``; L_pred's KL is the
other choice) is how far the stage's prediction is from the teacher's (cached targets, as for a Serial student);
the gate regresses the gain of reading on,
d_j - d_{j+1}, from the stage's predicted probabilities. At evaluation a video reads on while the predicted gain is
above ``threshold``, and stops otherwise. What is read is read then, from the store, and counted: ``frames_read``
and ``gflops`` (every stage the video ran, the gate included) are logged beside the metrics and returned by
predict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.samplers import AllFramesSampler, FrameSampler, UniformSampler
from lightning_distill.errors import ConfigError
from lightning_distill.evaluation.flops import inference_macs_by_part
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead
from lightning_distill.models.modes import eval_mode
from lightning_distill.training.losses import PredictionDistance, checked_distance, prediction_distance
from lightning_distill.training.module import (
    EVALUATION_STAGES,
    VideoClassifierModule,
    check_blocks,
    save_plain_hyperparameters,
)
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.teacher_targets import cached_targets, load_frozen_teacher, load_weights


class ExitGate(nn.Module):
    """Predicts, from one stage's class probabilities, how much closer to the teacher's the next stage would be.

    Features: the stage's ``top`` highest probabilities (sorted) and its sum of probabilities, plus a one-hot of
    the stage; one hidden layer.

    Args:
        num_stages: stages the gate decides after (all but the last).
        hidden: hidden units.
        top: probabilities kept as features.
    """

    def __init__(self, num_stages: int, hidden: int = 32, top: int = 5) -> None:
        super().__init__()
        self.num_stages = num_stages
        self.top = top
        self.layers = nn.Sequential(nn.Linear(top + 1 + num_stages, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, probabilities: Tensor, stage: int) -> Tensor:
        """(B, C) probabilities after stage ``stage`` -> (B,) predicted gain of reading the next stage."""
        top = probabilities.float().topk(min(self.top, probabilities.shape[1]), dim=1).values
        top = nn.functional.pad(top, (0, self.top - top.shape[1]))
        total = probabilities.float().sum(dim=1, keepdim=True)
        which = nn.functional.one_hot(torch.full_like(total[:, 0], stage, dtype=torch.long), self.num_stages)
        return self.layers(torch.cat([top, total, which.float()], dim=1)).squeeze(1)

    def flops(self) -> int:
        """FLOPs of one decision (2 per multiply-add of its linear layers)."""
        return sum(2 * m.in_features * m.out_features for m in self.layers if isinstance(m, nn.Linear))


def check_stages(stages: list[int]) -> None:
    """Raise ``ConfigError`` unless ``stages`` grow by odd factors, so each stage's Uniform frames hold the last's."""
    if len(stages) < 2 or any(k < 1 for k in stages):
        raise ConfigError(f"stages {stages}: give at least two frame counts >= 1, e.g. [6, 18]")
    for small, large in zip(stages, stages[1:]):
        if large <= small or large % small or (large // small) % 2 == 0:
            raise ConfigError(
                f"stages {stages}: {large} is not an odd multiple of {small}, so Uniform-{large} would not contain "
                f"Uniform-{small}'s frames; use e.g. {small * 3} or {small * 5}"
            )


class EarlyExitModule(VideoClassifierModule):
    """A trained student read in nested stages of Uniform frames, stopping per video where a gate says to.

    ``vdistill fit`` trains only the gate (the student's encoder and head, loaded from ``init_from``, stay frozen),
    against the teacher's cached targets; ``vdistill test`` reads each video stage by stage and logs
    ``test/frames_read`` and ``test/gflops`` (means per video) beside the YouTube-8M metrics. ``threshold`` sets the
    trade-off at evaluation: a higher one stops more videos early (fewer frames, less accuracy); it can be changed
    at test time without training again (``--model.init_args.threshold``).

    Args:
        encoder: the student's encoder (its family config); its weights come from ``init_from``.
        num_classes: C, linked from the data module.
        init_from: the trained student's checkpoint (``StudentModule`` or a k-frame ``TeacherModule`` baseline);
            best an any-k student trained over the stages' k (``AnyKSampler``). Needed to fit.
        teacher_checkpoint: the teacher whose predictions the gate learns to approach. Needed to fit.
        stages: frames read per stage, each an odd multiple of the one before (see the module docstring).
        threshold: a video reads the next stage while the gate's predicted gain is above this.
        head: builds the student's classifier (its family config).
        optimizer: builds the gate's optimiser.
        lr_scheduler: builds a per-epoch learning-rate schedule, or None.
        gate_hidden: hidden units of the gate.
        distance: how far a stage's prediction is from the teacher's (``prediction_distance``): ``squared`` (sum of
            squared probability differences, bounded) or ``kl`` (L_pred's default, heavy-tailed).
    """

    evaluated_roles = ("student",)
    predicting_role = "student"

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        init_from: str | None = None,
        teacher_checkpoint: str | None = None,
        stages: list[int] | None = None,
        threshold: float = 0.0,
        head: Callable[[int, int], ClassifierHead] = LogisticHead,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        gate_hidden: int = 32,
        distance: PredictionDistance = "squared",
    ) -> None:
        stages = list(stages or [6, 18])
        check_stages(stages)
        super().__init__(encoder, num_classes, head, optimizer, lr_scheduler, UniformSampler(stages[-1]))
        save_plain_hyperparameters(self)
        for k in stages:
            check_blocks(self.encoder, UniformSampler(k), "early exit's stage", adapt=False)
        self.init_from = init_from
        self.teacher_checkpoint = teacher_checkpoint
        self.stages = stages
        self.threshold = threshold
        self.distance = checked_distance(distance)
        self.gate = ExitGate(len(stages) - 1, gate_hidden)
        # The student is trained already: only the gate learns.
        self.encoder.requires_grad_(False)
        self.head.requires_grad_(False)
        self.cost = nn.ModuleDict(
            {stage: nn.ModuleDict({"frames_read": MeanMetric(), "gflops": MeanMetric()}) for stage in EVALUATION_STAGES}
        )
        self._stage_flops: list[int] | None = None

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        if stage == "fit":
            return {f"stage{j}": UniformSampler(k) for j, k in enumerate(self.stages)}
        return {"student": UniformSampler(self.stages[0])}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        if self.init_from is None or self.teacher_checkpoint is None:
            raise ConfigError(
                "EarlyExitModule trains a gate on a trained student against its teacher: set init_from (the "
                "student's checkpoint) and teacher_checkpoint"
            )
        teacher = load_frozen_teacher(self.teacher_checkpoint)
        self.trainer.datamodule.use_teacher_targets(
            [cached_targets(self.trainer, teacher, self.teacher_checkpoint, AllFramesSampler())]
        )

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a resumed fit has its weights already
            load_weights(self.init_from, {"encoder": self.encoder, "head": self.head}, "init_from")

    def stage_flops(self) -> list[int]:
        """FLOPs per video of each stage's student pass (encoder and head at that many frames)."""
        if self._stage_flops is None:
            self._stage_flops = [2 * sum(inference_macs_by_part(self.encoder, self.head, k)) for k in self.stages]
        return self._stage_flops

    def inference_network(self) -> None:
        """None: each video is read as far as the gate decides, so no one network predicts (see ``stage_flops``)."""
        return None

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        """Training batches: the frozen student's outputs at every stage (``stage<j>``) and the teacher's targets."""
        with torch.no_grad(), eval_mode(self.encoder, self.head):
            outputs = {f"stage{j}": self(batch.views[f"stage{j}"]) for j in range(len(self.stages))}
        return {**outputs, "teacher": ModelOutput.from_targets(batch.targets[0])}

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        """The gate's error on the gain of reading on: (predicted - (d_j - d_{j+1}))^2, d the distance to the
        teacher's prediction, averaged over videos and stages."""
        teacher = outputs["teacher"].probabilities
        probabilities = [outputs[f"stage{j}"].probabilities for j in range(len(self.stages))]
        distances = [prediction_distance(teacher, p, self.distance) for p in probabilities]
        errors = [
            nn.functional.mse_loss(self.gate(probabilities[j], j), distances[j] - distances[j + 1])
            for j in range(len(self.stages) - 1)
        ]
        return {"loss": torch.stack(errors).mean()}

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: VideoBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: VideoBatch, batch_idx: int) -> dict[str, Any]:
        """``{"video_ids", "probabilities": (B, C), "frames_read": (B,)}``, each video read as far as it chose."""
        probabilities, frames_read, _ = self.exit_predictions(batch)
        return {"video_ids": list(batch.video_ids), "probabilities": probabilities, "frames_read": frames_read}

    def _evaluate(self, batch: VideoBatch, stage: str) -> None:
        probabilities, frames_read, flops = self.exit_predictions(batch)
        self.metrics[stage]["student"].update(probabilities, batch.labels)
        self.cost[stage]["frames_read"].update(frames_read.float())
        self.cost[stage]["gflops"].update(flops / 1e9)

    def _log_metrics(self, stage: str) -> None:
        super()._log_metrics(stage)
        for name, meter in self.cost[stage].items():
            self.log(f"{stage}/{name}", meter.compute(), sync_dist=True)
            meter.reset()

    def exit_predictions(self, batch: VideoBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Read every video of ``batch`` stage by stage until the gate stops it (or the last stage).

        Returns:
            (B, C) probabilities of each video's last stage read, (B,) long frames read per video (distinct
            frames, every one read from the store once), (B,) FLOPs spent per video (student passes and gates).
        """
        view = batch.views["student"]
        count = len(batch)
        probabilities = view.frames.new_zeros(count, self.head.num_classes)
        frames_read = _distinct(view.positions)
        flops = view.frames.new_zeros(count)
        active = torch.arange(count, device=view.frames.device)
        last = len(self.stages) - 1
        for j in range(len(self.stages)):
            output = self(view)
            flops[active] += self.stage_flops()[j]
            if j == last:
                probabilities[active] = output.probabilities
                break
            flops[active] += self.gate.flops()
            reads_on = self.gate(output.probabilities, j) > self.threshold
            probabilities[active[~reads_on]] = output.probabilities[~reads_on]
            if not bool(reads_on.any()):
                break
            active = active[reads_on]
            view = FrameView(view.frames[reads_on], view.mask[reads_on], view.positions[reads_on])
            view, read = self._next_stage(batch, active, view, self.stages[j + 1])
            frames_read[active] += read
        return probabilities, frames_read, flops

    def _next_stage(self, batch: VideoBatch, active: Tensor, view: FrameView, k: int) -> tuple[FrameView, Tensor]:
        """The next stage's Uniform-k view of the videos ``active`` (rows of the batch), reading from the store only
        frames the current ``view`` does not hold; and how many frames each video read."""
        needed = UniformSampler(k).indices(batch.lengths[active].to(view.positions.device))
        held = view.positions
        missing = ~(needed[:, :, None] == held[:, None, :]).any(dim=2) & _first_of_equal(needed)
        new = torch.where(missing, needed, -1)
        read = self.trainer.datamodule.read_view(self._split(), batch.indices[active], new)
        # Each needed frame from where it now is: the held view or the new reads (padding -1 never matches).
        candidates = torch.cat([held, new], dim=1)
        source = (needed[:, :, None] == candidates[:, None, :]).float().argmax(dim=2)
        frames = torch.cat([view.frames, read.frames], dim=1)
        gathered = frames.gather(1, source[:, :, None].expand(-1, -1, frames.shape[2]))
        return FrameView(gathered, torch.ones_like(needed, dtype=torch.bool), needed), missing.sum(dim=1)

    def _split(self) -> str:
        """The split the running loop reads (its store holds the batch's ``indices``)."""
        if self.trainer.testing:
            return "test"
        return "predict" if self.trainer.predicting else "val"


def _distinct(positions: Tensor) -> Tensor:
    """(B, T) frame indices (-1 padding) -> (B,) how many distinct frames each row holds."""
    return (_first_of_equal(positions) & (positions >= 0)).sum(dim=1)


def _first_of_equal(positions: Tensor) -> Tensor:
    """(B, T) -> (B, T) bool: True at the first slot of each distinct value in a row (short videos repeat frames)."""
    slots = torch.arange(positions.shape[1], device=positions.device)
    earlier = (positions[:, :, None] == positions[:, None, :]) & (slots[None, None, :] < slots[None, :, None])
    return ~earlier.any(dim=2)


__all__ = ["EarlyExitModule", "ExitGate", "check_stages"]
