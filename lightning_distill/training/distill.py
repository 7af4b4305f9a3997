"""Parallel distillation: teacher and k-frame student trained together from scratch (paper section 4, Parallel)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_distill.data.batch import VideoBatch
from lightning_distill.data.samplers import AllFramesSampler, FrameSampler, UniformSampler
from lightning_distill.errors import ConfigError
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead
from lightning_distill.training.losses import ClassificationLoss, DistillLoss, LossTerm
from lightning_distill.training.module import (
    VideoClassifierModule,
    check_blocks,
    check_same_family,
    check_teacher_comparisons,
    loss_log_names,
    save_plain_hyperparameters,
)
from lightning_distill.training.outputs import ModelOutput, classify
from lightning_distill.training.student import default_student_loss

# How a Parallel student's classifier is trained (DistillModule's student_head).
StudentHead = Literal["shared", "teacher_trained", "own"]
STUDENT_HEADS = get_args(StudentHead)
# Checkpoint key of the join decided by the teacher's plateau (student_start_patience), for resumed fits.
STUDENT_JOIN = "student_join"


class DistillModule(VideoClassifierModule):
    """A teacher (all frames) and a k-frame student of the same family, trained jointly from scratch.

    Both encoders feed ONE head (the paper shares the classifier; see ``student_head`` for the alternatives). The
    teacher minimises L_CE on the "teacher" view; the student minimises ``loss`` on the "student" view, in which
    every teacher output is detached: no student loss sends a gradient into the teacher's encoder. A shared head
    does learn from the student's L_CE and L_pred through the student's own path (its probabilities are the head
    applied to the student's representation), as well as from the teacher's L_CE. The minimised total is the
    teacher's loss plus the student's.

    Logs ``train/teacher/loss``, ``train/student/loss``, ``train/student/loss/<term>`` and ``train/loss``
    (their sum); both models are evaluated: ``val/teacher/gap``, ``val/student/gap``, ... Predictions are the
    student's.

    Args:
        encoder: the student's encoder.
        num_classes: C, linked from the data module.
        teacher_encoder: the teacher's encoder, same family and sizes (H-RNN's block length may differ); default:
            a copy of the student's (its initial weights too), which one family config describes.
        sampler: the student's frames; default: ``UniformSampler(k=30)``.
        teacher_sampler: the teacher's frames; default: ``AllFramesSampler``.
        loss: the student's terms, name -> ``LossTerm``; None gives L_rep + L_pred + L_CE with weights 1.
        head: builds the shared classifier as ``head(encoder.output_dim, num_classes)``.
        optimizer: builds one optimiser over both encoders and the head.
        lr_scheduler: builds a per-epoch learning-rate schedule, or None for a constant rate.
        warmup_epochs: the student's terms that compare with the teacher (L_rep, L_pred) grow linearly from 0 to
            their weight over this many epochs from the student's start, so the student does not chase a teacher
            that is still random; 0: full weight from the start (the paper's setting).
        student_start_epoch: the student's loss joins the total at this epoch; before it, the teacher and the head
            train alone, so the student starts, as a Serial student does, from a head its teacher has trained, and
            its terms compare with a teacher that has learnt something. Its encoder (and its head, if its own) has a
            parameter group of its own, whose learning rate is set back to the optimiser's initial one when it
            starts, so a schedule that scales the current rate (ExponentialLR, StepLR) decays it from there, as it
            would a Serial student's.
            0: together from the first step (the paper's setting). Early stopping on the student's metric should
            start counting at N (``DelayedEarlyStopping(start_epoch=N)``, as the experiment grid sets): the
            student's validation GAP cannot improve before it starts. With ``student_start_patience`` it is the
            earliest epoch the student may join.
        student_start_patience: P: the student joins when the teacher's validation GAP (``val/teacher/gap``) has
            not improved for P validations (no earlier than ``student_start_epoch``), so the join follows the
            teacher's progress on the data at hand instead of a fixed epoch; the epoch decided is kept in
            checkpoints. None: the student joins at ``student_start_epoch``. Needs validation every epoch or so;
            with early stopping on the student's metric use ``DelayedEarlyStopping(after_student_joins=True)``.
            A fit in which the student never joins ends with a warning: its checkpoints hold an untrained student.
        student_start_latest: with ``student_start_patience``, the epoch the student joins at if the teacher's GAP
            is still improving by then: a teacher that converges slowly (NeXtVLAD on some data improves for 20+
            epochs) would otherwise leave the student no epochs to train. None: no deadline.
        train_sampler: the student's frames in training batches; default: ``sampler`` (see ``TeacherModule``).
        student_head: how the student's classifier is trained. ``"shared"`` (the paper's): one head, trained by
            the teacher's and the student's terms. ``"teacher_trained"``: one head, trained by the teacher's L_CE
            alone; the student's terms reach its encoder through the head without changing it, as a Serial student
            starts from a head its teacher trained. ``"own"``: the teacher has a head of its own
            (``teacher_head``), so the student's fits the k-frame representation only; with ``student_start_epoch``
            it starts as a copy of the teacher's head when the student joins, as a Serial student's starts from its
            teacher's trained head. With either of the last two the teacher learns exactly as it would alone.
        teacher_average_decay: None (the paper's setting): the student's L_rep and L_pred compare with the teacher
            as it is trained, its training-mode outputs (batch statistics, dropout) at this step. A decay d in
            [0, 1): they compare with an exponential moving average of the teacher's weights and batch-norm
            statistics, updated after every training step (w <- d w + (1 - d) w_teacher) and run in evaluation
            mode without gradient, as a Serial student's frozen teacher is; 0 is the teacher as it stands, in
            evaluation mode. It costs one more teacher forward pass, without backward, per training step.
        encoder_from_teacher: the student's encoder starts as a copy of the teacher's encoder (weights and batch-norm
            statistics) when the student joins, as a Serial student with ``encoder_from_teacher`` starts from its
            teacher's: the student is the teacher's network shown fewer frames. Needs a later join
            (``student_start_epoch`` or ``student_start_patience``): at epoch 0 the teacher is as random as the
            student. With ``student_head: own`` the student then starts from the teacher's whole network.
    """

    evaluated_roles = ("teacher", "student")
    predicting_role = "student"

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        teacher_encoder: VideoEncoder | None = None,
        sampler: FrameSampler | None = None,
        teacher_sampler: FrameSampler | None = None,
        loss: dict[str, LossTerm] | None = None,
        head: Callable[[int, int], ClassifierHead] = LogisticHead,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_epochs: float = 0.0,
        train_sampler: FrameSampler | None = None,
        student_head: StudentHead = "shared",
        student_start_epoch: int = 0,
        teacher_average_decay: float | None = None,
        student_start_patience: int | None = None,
        student_start_latest: int | None = None,
        encoder_from_teacher: bool = False,
    ) -> None:
        # A copy made before the student's encoder adapts to its k frames (H-RNN's block length).
        teacher_encoder = teacher_encoder or copy.deepcopy(encoder)
        super().__init__(
            encoder, num_classes, head, optimizer, lr_scheduler, sampler or UniformSampler(30), train_sampler
        )
        save_plain_hyperparameters(self)
        teacher_sampler = teacher_sampler or AllFramesSampler()
        check_same_family(teacher_encoder, encoder, "the teacher encoder")
        check_blocks(teacher_encoder, teacher_sampler, "teacher")
        self.criterion = DistillLoss(default_student_loss() if loss is None else loss)
        check_teacher_comparisons(self.criterion, teacher_sampler)
        self.teacher_criterion = DistillLoss({"ce": ClassificationLoss()})
        self.teacher_encoder = teacher_encoder
        self.teacher_sampler = teacher_sampler
        if student_head not in STUDENT_HEADS:
            raise ConfigError(f"student_head={student_head!r} is not one of {', '.join(STUDENT_HEADS)}")
        self.student_head = student_head
        # None unless "own", so checkpoints keep one copy of a shared head under its usual name.
        self.teacher_head = head(teacher_encoder.output_dim, num_classes) if student_head == "own" else None
        if warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs={warmup_epochs} must be >= 0")
        self.warmup_epochs = warmup_epochs
        if student_start_epoch < 0:
            raise ConfigError(f"student_start_epoch={student_start_epoch} must be >= 0")
        self.student_start_epoch = student_start_epoch
        if student_start_patience is not None and student_start_patience < 1:
            raise ConfigError(f"student_start_patience={student_start_patience} must be >= 1, or null")
        self.student_start_patience = student_start_patience
        if student_start_latest is not None and student_start_patience is None:
            raise ConfigError(
                "student_start_latest bounds a join decided by the teacher's plateau, but student_start_patience is "
                "not set: set it, or join at a fixed student_start_epoch"
            )
        if student_start_latest is not None and student_start_latest < student_start_epoch:
            raise ConfigError(
                f"student_start_latest={student_start_latest} is before student_start_epoch={student_start_epoch}, "
                "the earliest the student may join: make it >= student_start_epoch"
            )
        self.student_start_latest = student_start_latest
        joins_at_zero = student_start_epoch == 0 and (student_start_patience is None or student_start_latest == 0)
        if encoder_from_teacher and joins_at_zero:
            raise ConfigError(
                "encoder_from_teacher copies the teacher's encoder when the student joins, but the student joins at "
                "epoch 0, when the teacher is untrained: set student_start_epoch, or student_start_patience (with "
                "student_start_latest above 0)"
            )
        self.encoder_from_teacher = encoder_from_teacher
        # The epoch the student joins at: decided by the teacher's plateau when student_start_patience is set.
        self.join_epoch: int | None = student_start_epoch if student_start_patience is None else None
        self._teacher_plateau = {"best": -math.inf, "wait": 0}
        self.averaged_teacher = None
        if teacher_average_decay is not None:
            if not 0 <= teacher_average_decay < 1:
                raise ConfigError(f"teacher_average_decay={teacher_average_decay} must be in [0, 1), or null")
            average = get_ema_multi_avg_fn(teacher_average_decay)
            self.averaged_teacher = AveragedModel(self._teacher_network(), multi_avg_fn=average, use_buffers=True)
            # Out of the optimiser and of DDP's gradient reduction: it changes by averaging alone.
            self.averaged_teacher.requires_grad_(False)

    @property
    def student_started(self) -> bool:
        """Whether the student's loss is part of the total at the current epoch (always, outside a fit)."""
        if self._trainer is None:
            return True
        return self.join_epoch is not None and self.current_epoch >= self.join_epoch

    def parameter_groups(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        if self.join_epoch == 0:
            return super().parameter_groups()
        # The student's encoder (and own head) in a group of its own (the second), whose rate restarts when the
        # student does.
        student = [*self.encoder.parameters(), *(self.head.parameters() if self.student_head == "own" else ())]
        own = {id(parameter) for parameter in student}
        return [{"params": [p for p in super().parameter_groups() if id(p) not in own]}, {"params": student}]

    def _teacher_network(self) -> nn.ModuleDict:
        """The teacher's encoder and the head it classifies with (shared or its own), as one module."""
        head = self.head if self.teacher_head is None else self.teacher_head
        return nn.ModuleDict({"encoder": self.teacher_encoder, "head": head})

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.averaged_teacher is not None:
            self.averaged_teacher.update_parameters(self._teacher_network())

    def on_fit_start(self) -> None:
        if self.student_start_patience is not None and not self.trainer.limit_val_batches:
            raise ConfigError(
                "student_start_patience waits for the teacher's validation GAP, but the fit runs no validation: "
                "set trainer.limit_val_batches above 0, or join at a fixed student_start_epoch"
            )

    def on_validation_epoch_end(self) -> None:
        deciding = self.join_epoch is None and not self.trainer.sanity_checking and self.trainer.state.fn == "fit"
        # Before the metrics are reset, and before the checkpoint callbacks save, so a checkpoint holds the decision.
        # compute() gathers every rank's videos, so every rank decides alike.
        gap = float(self.metrics["val"]["teacher"].compute()["gap"]) if deciding else None
        super().on_validation_epoch_end()
        if gap is None:
            return
        plateau = self._teacher_plateau
        plateau["wait"] = 0 if gap > plateau["best"] else plateau["wait"] + 1
        plateau["best"] = max(plateau["best"], gap)
        if plateau["wait"] >= self.student_start_patience:
            self.join_epoch = max(self.current_epoch + 1, self.student_start_epoch)
            rank_zero_info(f"student joins at epoch {self.join_epoch}: the teacher's validation GAP has not "
                           f"improved on {plateau['best']:.4f} for {plateau['wait']} validations")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.student_start_patience is not None:
            checkpoint[STUDENT_JOIN] = {"join_epoch": self.join_epoch, **self._teacher_plateau}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        join = checkpoint.pop(STUDENT_JOIN, None)
        if join is not None and self.student_start_patience is not None:
            self.join_epoch = join["join_epoch"]
            self._teacher_plateau = {"best": join["best"], "wait": join["wait"]}
        super().on_load_checkpoint(checkpoint)

    def on_train_epoch_start(self) -> None:
        latest = self.student_start_latest
        if self.join_epoch is None and latest is not None and self.current_epoch >= latest:
            self.join_epoch = self.current_epoch
            rank_zero_info(f"student joins at epoch {self.join_epoch}: student_start_latest, the teacher's validation "
                           "GAP was still improving")
        if self.join_epoch and self.current_epoch == self.join_epoch:
            group = self.optimizers().optimizer.param_groups[1]
            group["lr"] = group.get("initial_lr", group["lr"])
            # Untouched until now (no loss reached them), so their optimiser state is as fresh as a Serial student's.
            if self.teacher_head is not None:
                self.head.load_state_dict(self.teacher_head.state_dict())
            if self.encoder_from_teacher:
                self.encoder.load_state_dict(self.teacher_encoder.state_dict())

    def on_train_end(self) -> None:
        # current_epoch counts the finished epochs here: a join at it or later never took a training step.
        if self.join_epoch is None or self.join_epoch >= self.current_epoch:
            rank_zero_warn(
                f"the student never trained: the fit ended after {self.current_epoch} epochs, "
                + ("before the teacher's validation GAP stalled for student_start_patience="
                   f"{self.student_start_patience} validations" if self.join_epoch is None
                   else f"and the student was to join at epoch {self.join_epoch}")
                + ", so the checkpoints hold an untrained student: raise max_epochs, or set student_start_latest "
                "(or an earlier student_start_epoch)"
            )

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        if stage == "predict":
            return {"student": self.sampler}
        return {"teacher": self.teacher_sampler, "student": self.own_sampler(stage)}

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        if self.student_head == "teacher_trained":
            outputs = {"student": classify(self.encoder, _without_gradient(self.head), batch.views["student"])}
        else:
            outputs = {"student": self(batch.views["student"])}
        if "teacher" in batch.views:
            teacher = self._teacher_network()
            outputs["teacher"] = classify(teacher["encoder"], teacher["head"], batch.views["teacher"])
            if self.averaged_teacher is not None and self.training:
                # Evaluation mode each time: Lightning sets every submodule to training mode at each epoch.
                averaged = self.averaged_teacher.eval().module
                with torch.no_grad():
                    outputs["target"] = classify(averaged["encoder"], averaged["head"], batch.views["teacher"])
        return outputs

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        teacher = loss_log_names(self.teacher_criterion(outputs["teacher"], None, labels), "teacher")
        # The loss terms detach every teacher-side tensor (stop-gradient), see training/losses.py.
        parts = self.criterion(outputs["student"], outputs.get("target", outputs["teacher"]), labels)
        scale = self._teacher_terms_scale()
        if scale < 1:
            comparing = [name for name, term in self.criterion.terms.items() if term.needs_teacher]
            parts = {**parts, **{name: scale * parts[name] for name in comparing}}
            parts["total"] = sum(value for name, value in parts.items() if name != "total")
        student = loss_log_names(parts, "student")
        total = teacher["teacher/loss"] + (student["student/loss"] if self.student_started else 0.0)
        return {"loss": total, **teacher, **student}

    def _teacher_terms_scale(self) -> float:
        """The warm-up factor of the terms that compare with the teacher at the current training step."""
        if not self.warmup_epochs or self._trainer is None:
            return 1.0
        if self.join_epoch is None:
            return 0.0
        epochs = self.global_step / max(self.trainer.num_training_batches, 1) - self.join_epoch
        return min(1.0, max(epochs, 0.0) / self.warmup_epochs)


def _without_gradient(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module`` as a function whose parameters get no gradient (gradients still flow through to its input)."""
    parameters = {name: parameter.detach() for name, parameter in module.named_parameters()}
    return lambda inputs: torch.func.functional_call(module, parameters, (inputs,))
