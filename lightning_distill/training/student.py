"""Serial distillation: a k-frame student learns from a trained, frozen teacher (paper section 4, Serial)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.samplers import AllFramesSampler, FrameSampler, UniformSampler
from lightning_distill.errors import ConfigError
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead
from lightning_distill.models.modes import eval_mode
from lightning_distill.training.checkpoints import load_module, read_checkpoint
from lightning_distill.training.losses import (
    ClassificationLoss,
    DistillLoss,
    LossTerm,
    PredictionLoss,
    RepresentationLoss,
)
from lightning_distill.training.module import (
    VideoClassifierModule,
    check_blocks,
    check_same_family,
    check_teacher_comparisons,
    loss_log_names,
    save_plain_hyperparameters,
)
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.teacher import TeacherModule

TEACHER_PREFIX = "teacher."
# The teacher outputs a target cache keeps: video-level ones (data/target_cache.py).
CACHEABLE_OUTPUTS = frozenset({"representation", "probabilities"})


def default_student_loss() -> dict[str, LossTerm]:
    """L_rep + L_pred + L_CE, each with weight 1: the paper's best Serial student."""
    return {"rep": RepresentationLoss(), "pred": PredictionLoss(), "ce": ClassificationLoss()}


class StudentModule(VideoClassifierModule):
    """A student that sees k frames, trained against a frozen teacher (Serial training).

    The teacher is a ``TeacherModule`` checkpoint, loaded when fitting starts, frozen (eval mode, no
    gradient) and run on the "teacher" view; the student runs on the "student" view. Its encoder must be of
    the teacher's family and sizes (only e.g. H-RNN's block length may differ), and its head starts as a copy
    of the teacher's trained head: the paper shares the classifier between teacher and student.

    The teacher's weights are never written into the student's checkpoints, so validate, test and predict
    need only the student's checkpoint (and read only the "student" view).

    Teacher targets: when every term that compares with the teacher reads only its video-level outputs (L_rep:
    E_T, L_pred: P_T), the teacher runs once over the training store when the fit starts and its outputs are kept
    beside the store (``data/target_cache.py``; reused by every later student of the same teacher and data).
    Training then reads only the student's k frames and the cached rows, instead of the teacher's every frame
    each step. ``teacher_targets: live`` runs the teacher every step instead; L_rep^I (per-frame teacher states
    at the student's frames) always does.

    The paper's losses: ``{rep, ce}``, ``{pred}``, ``{pred, ce}``, ``{rep, pred, ce}`` (the default), plus
    ``IntermediateRepresentationLoss`` (L_rep^I). ``{rep}`` alone is the paper's two-stage recipe: stage 1 fits
    with ``loss: {rep: RepresentationLoss}`` (the head gets no gradient, so it stays the teacher's); stage 2 fits
    again with ``teacher_checkpoint: null``, ``loss: {ce: ClassificationLoss}`` and ``init_from: <stage 1
    checkpoint>``, fine-tuning the student's encoder and the teacher's head with L_CE.

    Args:
        encoder: the student's encoder.
        num_classes: C, linked from the data module.
        teacher_checkpoint: a ``TeacherModule`` checkpoint; needed when a loss term compares with the teacher
            (``vdistill`` fills in the newest teacher of the student's family, see ``cli/run_directory.py``).
        sampler: the student's frames; default: ``UniformSampler(k=30)``.
        loss: term name -> ``LossTerm``; None gives L_rep + L_pred + L_CE with weights 1.
        init_from: a ``StudentModule`` checkpoint whose encoder and head weights start this fit (stage 2 of the
            L_rep recipe); otherwise the head starts from the teacher's and the encoder from scratch.
        teacher_sampler: the teacher's frames; default: ``AllFramesSampler``.
        head: builds the classifier as ``head(encoder.output_dim, num_classes)``; must build the teacher's kind
            of head, whose weights it starts from.
        optimizer: builds the optimiser from the student's parameters.
        lr_scheduler: builds a per-epoch learning-rate schedule, or None for a constant rate.
        teacher_targets: ``cached`` (compute the teacher's outputs once, see above) or ``live``.
        train_sampler: the student's frames in training batches; default: ``sampler``. An ``AnyKSampler`` makes an
            any-k student: trained at a k drawn per batch, it is evaluated (and predicts) at ``sampler``'s k, which
            a later ``vdistill test``/``predict`` may set to any value (``--model.init_args.sampler.init_args.k``).
    """

    evaluated_roles = ("student",)
    predicting_role = "student"

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        teacher_checkpoint: str | None = None,
        sampler: FrameSampler | None = None,
        loss: dict[str, LossTerm] | None = None,
        init_from: str | None = None,
        teacher_sampler: FrameSampler | None = None,
        head: Callable[[int, int], ClassifierHead] = LogisticHead,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        teacher_targets: Literal["cached", "live"] = "cached",
        train_sampler: FrameSampler | None = None,
    ) -> None:
        super().__init__(encoder, num_classes, head, optimizer, lr_scheduler, sampler or UniformSampler(30))
        teacher_sampler = teacher_sampler or AllFramesSampler()
        save_plain_hyperparameters(self)
        self.criterion = DistillLoss(default_student_loss() if loss is None else loss)
        if self.criterion.needs_teacher and teacher_checkpoint is None:
            needing = ", ".join(name for name, term in self.criterion.terms.items() if term.needs_teacher)
            raise ConfigError(
                f"loss terms {needing} compare with the teacher but teacher_checkpoint is not set: give the "
                "TeacherModule's .ckpt, or use loss {ce: ClassificationLoss} alone"
            )
        check_teacher_comparisons(self.criterion, teacher_sampler)
        if teacher_targets not in ("cached", "live"):
            raise ConfigError(f"teacher_targets must be 'cached' or 'live', got {teacher_targets!r}")
        self.teacher_checkpoint = teacher_checkpoint
        self.init_from = init_from
        self.teacher_sampler = teacher_sampler
        self.teacher_targets = teacher_targets
        self.train_sampler = train_sampler or self.sampler
        for k in getattr(self.train_sampler, "ks", [self.train_sampler.k]):
            check_blocks(self.encoder, UniformSampler(k), "student's training view", adapt=False)
        # Loaded by setup("fit"): evaluating a student never needs its teacher. With cached targets only the
        # teacher's head (the student's starting head) is kept.
        self.teacher: TeacherModule | None = None
        self._teacher_head: dict[str, Tensor] | None = None

    @property
    def cacheable(self) -> bool:
        """Whether the teacher's outputs can be cached: the terms read only video-level teacher outputs."""
        wanted = self.criterion.teacher_outputs
        return self.teacher_targets == "cached" and bool(wanted) and wanted <= CACHEABLE_OUTPUTS

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        if stage == "fit" and self.criterion.needs_teacher and self._teacher_head is None:
            return {"teacher": self.teacher_sampler, "student": self.train_sampler}
        return {"student": self.train_sampler if stage == "fit" else self.sampler}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Here, before Lightning moves the module to its device and restores a resumed fit's checkpoint.
        if stage != "fit" or self.teacher_checkpoint is None:
            return
        teacher = self._load_teacher(self.teacher_checkpoint)
        datamodule = self.trainer.datamodule
        if self.cacheable and hasattr(datamodule, "teacher_targets"):
            self._teacher_head = {key: value.clone() for key, value in teacher.head.state_dict().items()}
            self._cache_targets(teacher, datamodule)
            return
        if self.criterion.teacher_outputs - CACHEABLE_OUTPUTS and self.teacher_targets == "cached":
            rank_zero_info("teacher targets: live (L_rep^I compares the teacher's per-frame states every step)")
        self.teacher = teacher

    def on_fit_start(self) -> None:
        # Starting weights are for a fresh fit: a resumed one has restored its own by now (trainer.ckpt_path set).
        if self.trainer.ckpt_path is not None:
            return
        if self.init_from is not None:
            self._load_student_weights(self.init_from)
        elif self._teacher_head is not None:
            self.head.load_state_dict(self._teacher_head)
        elif self.teacher is not None:
            self.head.load_state_dict(self.teacher.head.state_dict())

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        outputs = {"student": self(batch.views["student"])}
        if batch.targets is not None:
            outputs["teacher"] = ModelOutput.from_targets(batch.targets)
        elif self.teacher is not None and self.criterion.needs_teacher and "teacher" in batch.views:
            # Eval mode where it runs (dropout off, batch-norm statistics frozen): the fixed target it was trained
            # to be, whatever mode Lightning puts the whole module in.
            with eval_mode(self.teacher), torch.no_grad():
                outputs["teacher"] = self.teacher(batch.views["teacher"])
        return outputs

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        return loss_log_names(self.criterion(outputs["student"], outputs.get("teacher"), labels))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {
            key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(TEACHER_PREFIX)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a fit: the teacher is already loaded from teacher_checkpoint but absent from the file, so its
        # weights are put back for the strict state-dict load.
        if self.teacher is not None:
            checkpoint["state_dict"].update(
                {TEACHER_PREFIX + key: value for key, value in self.teacher.state_dict().items()}
            )
        super().on_load_checkpoint(checkpoint)

    def _cache_targets(self, teacher: TeacherModule, datamodule: Any) -> None:
        """Have the data module attach the teacher's cached outputs to the training batches (built if needed)."""
        device = self.trainer.strategy.root_device
        teacher.to(device)
        cache, built = datamodule.teacher_targets(
            lambda view: _video_outputs(teacher, view),
            checkpoint=self.teacher_checkpoint,
            sampler=self.teacher_sampler,
            device=device,
            precision=str(self.trainer.precision),
            context=self.trainer.precision_plugin.forward_context,
        )
        action = "built" if built else "reused"
        rank_zero_info(f"teacher targets: cached, {action} {cache.path} (the build took {cache.build_seconds:.1f} s)")

    def _load_teacher(self, path: str) -> TeacherModule:
        if not Path(path).is_file():
            raise ConfigError(f"teacher checkpoint {path} does not exist: train a TeacherModule with `vdistill fit`")
        teacher = load_module(TeacherModule, path)
        check_same_family(teacher.encoder, self.encoder, f"teacher checkpoint {path}")
        check_blocks(teacher.encoder, self.teacher_sampler, "teacher")
        _check_same_head(teacher.head, self.head, path)
        # Frozen weights but not LightningModule.freeze(): its eval() would leave the teacher in eval mode at the
        # start of training, which Lightning warns about; model_step sets eval mode just where the teacher runs.
        teacher.requires_grad_(False)
        return teacher

    def _load_student_weights(self, path: str) -> None:
        state = read_checkpoint(path)["state_dict"]
        for name, part in (("encoder", self.encoder), ("head", self.head)):
            prefix = f"{name}."
            weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            try:
                part.load_state_dict(weights)
            except RuntimeError:
                raise ConfigError(
                    f"init_from {path} does not hold this student's {name} weights (missing or other sizes): "
                    "give a checkpoint of a StudentModule with the same encoder and head"
                ) from None


def _video_outputs(teacher: TeacherModule, view: FrameView) -> dict[str, Tensor]:
    """What the cache keeps of the teacher's outputs for a view: those of the frozen teacher, in eval mode as where
    it runs live (dropout off, batch-norm running statistics), not the noisy train-mode outputs of a fresh load."""
    with eval_mode(teacher):
        output = teacher(view)
    return {"representation": output.representation, "probabilities": output.probabilities}


def _check_same_head(teacher_head: nn.Module, student_head: nn.Module, path: str) -> None:
    """Raise ``ConfigError`` unless the student's head can start from the teacher's weights."""
    shapes = {key: value.shape for key, value in teacher_head.state_dict().items()}
    if type(teacher_head) is not type(student_head) or shapes != {
        key: value.shape for key, value in student_head.state_dict().items()
    }:
        raise ConfigError(
            f"teacher checkpoint {path} has a {type(teacher_head).__name__} head of "
            f"{teacher_head.num_classes} classes but the student's is a {type(student_head).__name__} of "
            f"{student_head.num_classes}: configure the student's head and data as the teacher's"
        )
