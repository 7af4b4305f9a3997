"""Serial distillation: a k-frame student learns from a trained, frozen teacher (paper section 4, Serial)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_distill.data.batch import VideoBatch
from lightning_distill.data.samplers import AllFramesSampler, AnyKSampler, FrameSampler, UniformSampler
from lightning_distill.errors import ConfigError
from lightning_distill.evaluation.metrics import YT8MMetrics
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead
from lightning_distill.models.modes import eval_mode
from lightning_distill.training.losses import (
    ClassificationLoss,
    DistillLoss,
    LossTerm,
    PredictionLoss,
    RepresentationLoss,
)
from lightning_distill.training.ensemble import RepresentationAdapter, ensemble_output
from lightning_distill.training.module import (
    VideoClassifierModule,
    check_blocks,
    check_same_family,
    check_teacher_comparisons,
    loss_log_names,
    raise_if_not_finite,
    same_family,
    save_plain_hyperparameters,
)
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.teacher import TeacherModule
from lightning_distill.training.teacher_targets import (
    cached_targets,
    check_same_inputs,
    load_frozen_teacher,
    load_weights,
)

TEACHER_PREFIX = "teacher."
# The views (and outputs) of an any-k student at fixed ks, in every training batch (AnyKSampler.every_batch) and
# in validation batches (validation_ks): "student_k30" for k = 30.
EVERY_BATCH_VIEW = "student_k{k}"
# An any-k student's validation GAP over its validation_ks: their mean, what its checkpoint is kept by.
ANY_K_METRIC = "val/any_k/gap"
ADAPTER_PREFIX = "adapter."
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

    Ensembles (beyond the paper): ``ensemble_teachers`` adds frozen teachers of any family. L_pred then compares
    with the mean of all teachers' probabilities and L_rep with every teacher's representation, through a learned
    projection for a teacher of another family or size (``training/ensemble.py``). Each teacher's targets are
    cached, computed on the inputs it was trained on (the normalisation its checkpoint records). Without
    ``teacher_checkpoint`` the student's head starts from scratch: no teacher's head fits it.

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
            With ``every_batch`` each batch is also seen at those ks and every view's total is summed
            (``train/loss``; the drawn k's terms log as ``train/loss/<term>``, k = 30's as
            ``train/k30/loss/<term>``).
        ensemble_teachers: further ``TeacherModule`` checkpoints, of any family, distilled from together with
            ``teacher_checkpoint`` (see above); they need cached targets and loss terms on video-level outputs.
        head_from_teacher: start the head from the teacher's trained head (the paper's shared classifier); False
            trains it from scratch with the encoder (measured better for tiny NeXtVLAD, see the README).
        encoder_from_teacher: start the encoder from the teacher's trained encoder instead of random weights (beyond
            the paper: the student is the teacher's network shown fewer frames, so the teacher's weights are a
            start that already works on k frames). Needs ``teacher_checkpoint``; ``init_from`` overrides it.
        ensemble_representation: with ``ensemble_teachers``, whose representations L_rep compares with: ``every``
            teacher's (one of another family through a learned projection, as above) or only the ``own`` family's
            (teachers of the student's family and sizes; the others teach through L_pred alone). Measured either
            way (README, "Teachers of several families"): a NetVLAD student of NetVLAD + H-RNN teachers on the
            independent data lost 0.005 GAP at k = 6 with ``every`` and was level with ``own``; an H-RNN student of
            H-RNN + NeXtVLAD teachers on our synthetic data did better at k = 30 with ``every``.
        validation_ks: with an ``AnyKSampler`` ``train_sampler``, ks the student is also validated at (frames by
            that sampler's ``selection`` at each k): logs ``val/k<k>/gap`` for each and their mean as
            ``val/any_k/gap`` (``ANY_K_METRIC``). One checkpoint serves every k, so a checkpoint and early stopping
            that watch the mean keep the weights best over all of them; the GAP at one k favours that k (README,
            "One student for any k").
    """

    evaluated_roles = ("student",)
    predicting_role = "student"
    trains_every_batch_views = True

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
        ensemble_teachers: list[str] | None = None,
        head_from_teacher: bool = True,
        encoder_from_teacher: bool = False,
        ensemble_representation: Literal["every", "own"] = "every",
        validation_ks: list[int] | None = None,
    ) -> None:
        super().__init__(
            encoder, num_classes, head, optimizer, lr_scheduler, sampler or UniformSampler(30), train_sampler
        )
        save_plain_hyperparameters(self)
        teacher_sampler = teacher_sampler or AllFramesSampler()
        self.criterion = DistillLoss(default_student_loss() if loss is None else loss)
        self.ensemble_teachers = list(ensemble_teachers or [])
        if self.criterion.needs_teacher and teacher_checkpoint is None and not self.ensemble_teachers:
            needing = ", ".join(name for name, term in self.criterion.terms.items() if term.needs_teacher)
            raise ConfigError(
                f"loss terms {needing} compare with the teacher but teacher_checkpoint is not set: give the "
                "TeacherModule's .ckpt, or use loss {ce: ClassificationLoss} alone"
            )
        check_teacher_comparisons(self.criterion, teacher_sampler)
        if teacher_targets not in ("cached", "live"):
            raise ConfigError(f"teacher_targets must be 'cached' or 'live', got {teacher_targets!r}")
        live_or_per_frame = teacher_targets != "cached" or self.criterion.teacher_outputs - CACHEABLE_OUTPUTS
        if self.ensemble_teachers and live_or_per_frame:
            raise ConfigError(
                "ensemble_teachers are distilled from cached targets (each on the inputs it was trained on): set "
                "teacher_targets: cached and compare only video-level outputs (L_rep, L_pred; not L_rep^I)"
            )
        if not head_from_teacher and not any(term.trains_head for term in self.criterion.terms.values()):
            raise ConfigError(
                "head_from_teacher is false but no loss term trains the head, which would stay random: add L_CE or "
                "L_pred, or start the head from the teacher's"
            )
        if encoder_from_teacher and teacher_checkpoint is None and init_from is None:
            raise ConfigError(
                "encoder_from_teacher is true but teacher_checkpoint is not set: give the TeacherModule's .ckpt "
                "whose encoder starts the student, or set encoder_from_teacher: false"
            )
        if ensemble_representation not in ("every", "own"):
            raise ConfigError(f"ensemble_representation must be 'every' or 'own', got {ensemble_representation!r}")
        self.ensemble_representation = ensemble_representation
        self.validation_ks = sorted(set(validation_ks or []))
        if self.validation_ks:
            self._check_validation_ks(encoder)
        # The view each k is validated on, named once: the student's own where its sampler reads those frames (a
        # grid's any-k student is evaluated at the largest k it is validated at), so they are not read twice.
        self.validation_views = {
            k: "student" if repr(self.train_sampler.at(k)) == repr(self.sampler) else EVERY_BATCH_VIEW.format(k=k)
            for k in self.validation_ks
        }
        self.validation_metrics = nn.ModuleDict({str(k): YT8MMetrics(num_classes) for k in self.validation_ks})
        # Per teacher, whether its representation is part of the ensemble's: set by setup("fit").
        self._represented: list[bool] | None = None
        self.head_from_teacher = head_from_teacher
        self.encoder_from_teacher = encoder_from_teacher
        self.teacher_checkpoint = teacher_checkpoint
        self.init_from = init_from
        self.teacher_sampler = teacher_sampler
        self.teacher_targets = teacher_targets
        # Loaded by setup("fit"): evaluating a student never needs its teacher. With cached targets only the
        # teacher's weights the student starts from are kept (part name -> state dict).
        self.teacher: TeacherModule | None = None
        self._teacher_start: dict[str, dict[str, Tensor]] = {}
        # Made by setup("fit") when the student's representation is compared with an ensemble's.
        self.adapter: RepresentationAdapter | None = None
        self._targets_cached = False

    @property
    def cacheable(self) -> bool:
        """Whether the teacher's outputs can be cached: the terms read only video-level teacher outputs."""
        wanted = self.criterion.teacher_outputs
        return self.teacher_targets == "cached" and bool(wanted) and wanted <= CACHEABLE_OUTPUTS

    @property
    def teacher_paths(self) -> list[str]:
        """Every teacher's checkpoint: ``teacher_checkpoint`` (if set) first, then ``ensemble_teachers``."""
        return ([self.teacher_checkpoint] if self.teacher_checkpoint else []) + self.ensemble_teachers

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        if stage == "validate" and self.validation_ks:
            views = {"student": self.sampler}
            for k, view in self.validation_views.items():
                views.setdefault(view, self.train_sampler.at(k))
            return views
        if stage != "fit":
            return {"student": self.own_sampler(stage)}
        views = {}
        if self.criterion.needs_teacher and self.teacher_checkpoint and not self._targets_cached:
            views["teacher"] = self.teacher_sampler
        views["student"] = self.train_sampler
        if isinstance(self.train_sampler, AnyKSampler):
            for k, sampler in self.train_sampler.every_batch_samplers.items():
                views[EVERY_BATCH_VIEW.format(k=k)] = sampler
        return views

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Here, before Lightning moves the module to its device and restores a resumed fit's checkpoint.
        if stage != "fit" or not self.teacher_paths:
            return
        primary = self._load_teacher(self.teacher_checkpoint) if self.teacher_checkpoint else None
        if primary is not None:
            self._teacher_start = self._starting_parts(primary)
        teachers = [primary] if primary is not None else []
        teachers += [load_frozen_teacher(path) for path in self.ensemble_teachers]
        self.on_teachers_loaded(dict(zip(self.teacher_paths, teachers)))
        datamodule = self.trainer.datamodule
        if self.cacheable and hasattr(datamodule, "teacher_targets"):
            if primary is None:
                rank_zero_info("student head: trained from scratch (no teacher of the student's family and sizes)")
            datamodule.use_teacher_targets(
                [
                    cached_targets(self.trainer, teacher, path, self.teacher_sampler)
                    for teacher, path in zip(teachers, self.teacher_paths)
                ]
            )
            self._targets_cached = True
            if (len(teachers) > 1 or primary is None) and "representation" in self.criterion.teacher_outputs:
                own = [same_family(t.encoder, self.encoder) for t in teachers]
                self._represented = own if self.ensemble_representation == "own" else [True] * len(teachers)
                self.adapter = self._adapter(teachers, own)
            return
        if self.ensemble_teachers:
            raise ConfigError("ensemble_teachers need a data module that caches teacher targets (YT8MDataModule)")
        check_same_inputs(self.teacher_checkpoint, datamodule)
        if self.criterion.teacher_outputs - CACHEABLE_OUTPUTS and self.teacher_targets == "cached":
            rank_zero_info("teacher targets: live (L_rep^I compares the teacher's per-frame states every step)")
        self.teacher = primary

    def on_teachers_loaded(self, teachers: dict[str, TeacherModule]) -> None:
        """Called by ``setup("fit")`` with every teacher it loaded (checkpoint path -> frozen module), before cached
        targets let it drop them: a subclass that needs one of them for more keeps it here instead of reading its
        checkpoint again (at paper sizes up to ~1 GB)."""

    def on_fit_start(self) -> None:
        # Starting weights are for a fresh fit: a resumed one has restored its own by now (trainer.ckpt_path set).
        if self.trainer.ckpt_path is not None:
            return
        if self.init_from is not None:
            load_weights(self.init_from, {"encoder": self.encoder, "head": self.head}, "init_from")
            return
        for name, state in self._teacher_start.items():
            getattr(self, name).load_state_dict(state)

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        outputs = {"student": self(batch.views["student"])}
        outputs.update({name: self(view) for name, view in batch.views.items() if _is_every_batch_view(name)})
        if batch.targets is not None:
            outputs["teacher"] = ensemble_output(
                [ModelOutput.from_targets(rows) for rows in batch.targets], self._represented
            )
        elif self.teacher is not None and self.criterion.needs_teacher and "teacher" in batch.views:
            # Eval mode where it runs (dropout off, batch-norm statistics frozen): the fixed target it was trained
            # to be, whatever mode Lightning puts the whole module in.
            with eval_mode(self.teacher), torch.no_grad():
                outputs["teacher"] = self.teacher(batch.views["teacher"])
        return outputs

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        parts = loss_log_names(self._criterion(outputs["student"], outputs.get("teacher"), labels))
        for name in filter(_is_every_batch_view, outputs):
            role = name.removeprefix("student_")
            extra = loss_log_names(self._criterion(outputs[name], outputs.get("teacher"), labels), role)
            parts = {**parts, **extra, "loss": parts["loss"] + extra[f"{role}/loss"]}
        return parts

    def _criterion(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> dict[str, Tensor]:
        """The loss parts of one student output (through the ensemble's adapter, if any)."""
        if self.adapter is not None:
            student = self.adapter.adapt(student)
        return self.criterion(student, teacher, labels)

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> None:
        outputs = self._update_metrics(batch, "val")
        for view, metric in zip(self.validation_views.values(), self.validation_metrics.values()):
            if view not in outputs:  # the data module was given views of its own (data.views), not ours
                raise ConfigError(
                    f"validation batches have no view {view!r} for validation_ks={self.validation_ks}: drop "
                    "data.views (the student names its views) or validation_ks"
                )
            raise_if_not_finite(outputs[view].probabilities, batch)
            metric.update(outputs[view].probabilities, batch.labels)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.validation_ks:
            return
        gaps = []
        for k, metric in zip(self.validation_ks, self.validation_metrics.values()):
            gaps.append(metric.compute()["gap"].float())
            metric.reset()
            # compute() gathers every rank's videos (see _log_metrics): sync_dist averages equal values.
            self.log(f"val/k{k}/gap", gaps[-1], sync_dist=True)
        self.log(ANY_K_METRIC, torch.stack(gaps).mean(), sync_dist=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {
            key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(TEACHER_PREFIX)
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.adapter is None:
            # Evaluating: the adapter only served the fit's L_rep.
            state = checkpoint["state_dict"]
            for key in [key for key in state if key.startswith(ADAPTER_PREFIX)]:
                del state[key]
        # Resuming a fit: the teacher is already loaded from teacher_checkpoint but absent from the file, so its
        # weights are put back for the strict state-dict load.
        if self.teacher is not None:
            checkpoint["state_dict"].update(
                {TEACHER_PREFIX + key: value for key, value in self.teacher.state_dict().items()}
            )
        super().on_load_checkpoint(checkpoint)

    def _starting_parts(self, teacher: TeacherModule) -> dict[str, dict[str, Tensor]]:
        """The teacher's weights the student starts from (copies: a cached-targets fit drops the teacher)."""
        parts = {"head": teacher.head} if self.head_from_teacher else {}
        if self.encoder_from_teacher:
            parts["encoder"] = teacher.encoder
        return {name: {key: value.clone() for key, value in part.state_dict().items()} for name, part in parts.items()}

    def _adapter(self, teachers: list[TeacherModule], own: list[bool]) -> RepresentationAdapter:
        """Matches the student's representation to the ensemble's parts (``_represented``): itself for a teacher of
        its family and sizes (``own``), a learned projection for any other."""
        if not any(self._represented):
            raise ConfigError(
                f"ensemble_representation: own, but no teacher ({', '.join(self.teacher_paths)}) is of the student's "
                "family and sizes: use ensemble_representation: every, or drop L_rep"
            )
        kept = [(t.encoder.output_dim, not same) for t, same, kept in zip(teachers, own, self._represented) if kept]
        return RepresentationAdapter(self.encoder.output_dim, [dim for dim, _ in kept], [proj for _, proj in kept])

    def _check_validation_ks(self, encoder: VideoEncoder) -> None:
        """Raise ``ConfigError`` unless ``validation_ks`` validates an any-k student at ks its encoder takes."""
        if not isinstance(self.train_sampler, AnyKSampler):
            raise ConfigError(
                f"validation_ks={self.validation_ks} validates an any-k student at several ks, but train_sampler is "
                f"{self.train_sampler!r}: set train_sampler to an AnyKSampler, or drop validation_ks"
            )
        if self.validation_ks[0] < 1:
            raise ConfigError(f"validation_ks={self.validation_ks}: list frame counts >= 1, e.g. [6, 10, 15, 20, 30]")
        for k in self.validation_ks:
            check_blocks(encoder, UniformSampler(k), "student's validation view", adapt=False)

    def _load_teacher(self, path: str) -> TeacherModule:
        """The student's own teacher: of its family and sizes, with the head the student starts from."""
        teacher = load_frozen_teacher(path)
        check_same_family(teacher.encoder, self.encoder, f"teacher checkpoint {path}")
        check_blocks(teacher.encoder, self.teacher_sampler, "teacher")
        _check_same_head(teacher.head, self.head, path)
        return teacher


def _is_every_batch_view(name: str) -> bool:
    """Whether ``name`` is one of the views ``AnyKSampler.every_batch`` adds (``EVERY_BATCH_VIEW``)."""
    return name.startswith(EVERY_BATCH_VIEW.format(k=""))


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
