"""What every vdistill LightningModule shares: encoder + head, optimiser, one step for all stages, metrics, logs.

Subclasses say which frame views they need (``frame_views``), what a batch gives (``model_step``: one
``ModelOutput`` per role, "teacher" and/or "student") and what they minimise (``losses``). Everything else (the
train/val/test/predict loops, the YouTube-8M metrics, logging, the divergence check) lives here, once.
"""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.normalization import FeatureNormalizer, normalization_config
from lightning_distill.data.samplers import FrameSampler, ScoredSampler, UniformSampler
from lightning_distill.errors import ConfigError, DataError
from lightning_distill.evaluation.metrics import YT8MMetrics
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead
from lightning_distill.training.checkpoints import check_state_fits
from lightning_distill.training.losses import DistillLoss, IntermediateRepresentationLoss
from lightning_distill.training.outputs import ModelOutput, classify

EVALUATION_STAGES = ("val", "test")
# The checkpoint entry recording the input normalisation a model was trained on (normalization_config's record).
INPUT_NORMALIZATION = "input_normalization"


@dataclass
class InferenceNetwork:
    """The network a module predicts with, and the frames it reads: what ``vdistill profile`` measures."""

    encoder: VideoEncoder
    head: ClassifierHead
    sampler: FrameSampler

    def frames_per_video(self, max_frames: int) -> int:
        """Frames the network reads per video: its sampler's k, or every frame up to ``max_frames``."""
        return self.sampler.k or max_frames


class VideoClassifierModule(L.LightningModule, ABC):
    """Base of the vdistill modules: ``encoder`` + ``head`` classify the videos of one view.

    Logs ``train/loss`` and ``train/loss/<term>`` every step, and per evaluated role at the end of each
    validation/test epoch ``val/gap``, ``val/map``, ``val/map_all_classes``, ``val/hit_at_one``, ``val/perr``
    (``test/...``; ``val/<role>/gap`` ... when a module evaluates both teacher and student).

    Args:
        encoder: frames -> video representation (the model that predicts).
        num_classes: C, linked from the data module.
        head: builds the classifier as ``head(encoder.output_dim, num_classes)``.
        optimizer: builds the optimiser from the trainable parameters.
        lr_scheduler: builds a per-epoch learning-rate schedule from the optimiser, or None.
        sampler: the frames ``encoder`` sees when it is evaluated and when it predicts.
        train_sampler: the frames it sees in training batches; default: ``sampler``. E.g. ``RandomSampler(k)``
            (new frames every epoch) for a model tested on ``UniformSampler(k)``, or an ``AnyKSampler`` (a k drawn
            per batch) for a model tested at any k.

    Attributes:
        evaluated_roles: the roles whose predictions are scored at validation and test.
        predicting_role: the role whose view and predictions ``predict_step`` uses.
        trains_every_batch_views: whether the module honours ``AnyKSampler(every_batch=...)`` (more training
            views, at fixed ks); any other refuses such a sampler rather than ignore the setting.
    """

    evaluated_roles: tuple[str, ...]
    predicting_role: str
    trains_every_batch_views = False

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        head: Callable[[int, int], ClassifierHead],
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        sampler: FrameSampler,
        train_sampler: FrameSampler | None = None,
    ) -> None:
        super().__init__()
        check_blocks(encoder, sampler, self.predicting_role)
        self.train_sampler = train_sampler or sampler
        if getattr(self.train_sampler, "every_batch", None) and not self.trains_every_batch_views:
            raise ConfigError(
                f"{type(self).__name__} trains one view per batch, so AnyKSampler(every_batch=...) would be ignored: "
                "use it with a StudentModule, or drop every_batch"
            )
        for k in getattr(self.train_sampler, "ks", [self.train_sampler.k]):
            if k is not None:  # every frame: a model that skims them all (models/skim.py)
                check_blocks(encoder, UniformSampler(k), f"{self.predicting_role}'s training view", adapt=False)
        self.encoder = encoder
        self.head = head(encoder.output_dim, num_classes)
        self.sampler = sampler
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({role: YT8MMetrics(num_classes) for role in self.evaluated_roles})
                for stage in EVALUATION_STAGES
            }
        )

    @abstractmethod
    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        """The views a batch must hold, view name -> sampler.

        Args:
            stage: the Lightning stage the loader serves: "fit" (training batches), "validate", "test" or
                "predict".
        """

    @abstractmethod
    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        """Role ("teacher", "student") -> its outputs, for the roles whose views the batch holds."""

    @abstractmethod
    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        """Log name under ``train/`` -> weighted loss value; ``"loss"`` is the total that is minimised."""

    def own_sampler(self, stage: str) -> FrameSampler:
        """The frames this module's own model (the one it predicts with) reads at ``stage``: ``train_sampler`` in
        training batches ("fit"), ``sampler`` otherwise."""
        return self.train_sampler if stage == "fit" else self.sampler

    def forward(self, view: FrameView) -> ModelOutput:
        """Classify one view with ``encoder`` + ``head``."""
        return classify(self.encoder, self.head, view)

    def inference_network(self) -> InferenceNetwork | None:
        """The encoder, head and sampler this module predicts with; None for a module that reads each video as far
        as it decides (``EarlyExitModule``), whose network is not one fixed graph."""
        return InferenceNetwork(self.encoder, self.head, self.sampler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The random state too (dropout), so a fit resumed from this checkpoint takes the steps it would have taken.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_initialized():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        # The inputs the weights expect: a student of another family distils from this model's targets computed on
        # the inputs it was trained on, not on the student's (StudentModule).
        normalizer = getattr(self._trainer.datamodule, "normalization", None) if self._trainer is not None else None
        if isinstance(normalizer, FeatureNormalizer):
            checkpoint[INPUT_NORMALIZATION] = normalization_config(normalizer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states and self._trainer is not None and self._trainer.state.fn == "fit":
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
        ckpt_path = self._trainer.ckpt_path if self._trainer is not None else None
        source = f"checkpoint {ckpt_path or ''}".strip()
        trained_for = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
        if isinstance(trained_for, int) and trained_for != self.head.num_classes:
            raise ConfigError(
                f"{source} was trained for {trained_for} classes but the data has {self.head.num_classes}: "
                "evaluate it on data with its label vocabulary (data.num_classes)"
            )
        check_state_fits(checkpoint["state_dict"], self.state_dict(), source=source)

    def setup(self, stage: str) -> None:
        max_frames = getattr(self.trainer.datamodule, "max_frames", None)
        if max_frames is not None:
            # A fit reads validation batches too, whose views may differ (StudentModule.validation_ks).
            stages = (stage, "validate") if stage == "fit" else (stage,)
            views = {name: sampler for each in stages for name, sampler in self.frame_views(each).items()}
            for name, sampler in views.items():
                if sampler.k is not None and sampler.k > max_frames:
                    raise ConfigError(
                        f"the {name} sampler takes k={sampler.k} frames but the data keeps max_frames={max_frames}: "
                        f"use k <= {max_frames} or raise data max_frames"
                    )

    def training_step(self, batch: VideoBatch, batch_idx: int) -> Tensor:
        losses = self.losses(self.model_step(batch), batch.labels)
        self._raise_if_diverged(losses, batch)
        # Logged per step only, so no cross-rank reduction (sync_dist) is needed. The total goes on the progress bar.
        self.log_dict({f"train/{name}": value for name, value in losses.items() if name != "loss"}, batch_size=len(batch))
        self.log("train/loss", losses["loss"], batch_size=len(batch), prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> None:
        self._update_metrics(batch, "val")

    def test_step(self, batch: VideoBatch, batch_idx: int) -> None:
        self._update_metrics(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: VideoBatch, batch_idx: int) -> dict[str, Any]:
        """``{"video_ids": B ids, "probabilities": (B, C)}`` from the predicting role's view."""
        output = self(batch.views[self.predicting_role])
        raise_if_not_finite(output.probabilities, batch)
        return {"video_ids": list(batch.video_ids), "probabilities": output.probabilities}

    def parameter_groups(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """What the optimiser trains: every parameter that requires a gradient (frozen ones, a Serial student's
        teacher, stay out), or a module's own parameter groups."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameter_groups())
        if self.lr_scheduler is None:
            return optimizer
        scheduler = {"scheduler": self.lr_scheduler(optimizer), "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _update_metrics(self, batch: VideoBatch, stage: str) -> dict[str, ModelOutput]:
        """Score the evaluated roles' predictions of ``batch``; returns every output of the step."""
        outputs = self.model_step(batch)
        for role, metric in self.metrics[stage].items():
            raise_if_not_finite(outputs[role].probabilities, batch)
            metric.update(outputs[role].probabilities, batch.labels)
        if isinstance(self.sampler, ScoredSampler):
            # What choosing the frames cost, beside what the network cost: a content sampler's price (per video).
            for name, values in self.sampler.selection_cost(batch.lengths).items():
                self.log(f"{stage}/{name}", values.float().mean(), on_step=False, on_epoch=True,
                         batch_size=len(batch), sync_dist=True)
        return outputs

    def _log_metrics(self, stage: str) -> None:
        metrics = self.metrics[stage]
        for role, metric in metrics.items():
            prefix = f"{stage}/{role}/" if len(metrics) > 1 else f"{stage}/"
            # compute() already gathers every rank's videos, so every rank holds the same values; sync_dist
            # averages those equal values (exact), for Lightning's sake.
            values = {prefix + name: value.float() for name, value in metric.compute().items()}
            self.log_dict({k: v for k, v in values.items() if not k.endswith("/gap")}, sync_dist=True)
            # GAP, the number a run is judged by, on the progress bar too.
            self.log(prefix + "gap", values[prefix + "gap"], sync_dist=True, prog_bar=True)
            metric.reset()

    def _raise_if_diverged(self, losses: dict[str, Tensor], batch: VideoBatch) -> None:
        if bool(torch.isfinite(losses["loss"])):  # one device sync per step; the search below only on failure
            return
        _raise_if_bad_features(batch, f"the batch of step {self.global_step}")
        # Deepest names first, so the message names the term that diverged, not a sum it poisoned.
        for name in sorted(losses, key=lambda n: -n.count("/")):
            value = float(losses[name].detach())
            if not math.isfinite(value):
                term = name.rsplit("/", 1)[-1]
                raise ConfigError(
                    f"loss term {term!r} (train/{name}) became {value} at step {self.global_step}: "
                    "lower its weight or the learning rate"
                )


def save_plain_hyperparameters(module: L.LightningModule) -> None:
    """``module.save_hyperparameters()`` for the caller's constructor, keeping only plain data.

    Built by LightningCLI (``vdistill``), a module's arguments arrive as their config (``class_path`` and
    ``init_args`` dicts): all of it is kept, and the checkpoint rebuilds the module alone. Built in Python, the
    arguments are objects (an encoder, a sampler): pickled into the checkpoint, they would make it loadable only by
    the unrestricted unpickler, which vdistill refuses (``training/checkpoints.py``). Those are left out; such a
    checkpoint's ``load_from_checkpoint`` takes them as keyword arguments.
    """
    with warnings.catch_warnings():
        # Lightning advises ignoring nn.Module arguments: they are, just below.
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
        module.save_hyperparameters(frame=inspect.currentframe().f_back)
    module.remove_ignored_hparams([name for name, value in module.hparams.items() if not _is_plain(value)])


def _is_plain(value: Any) -> bool:
    """Whether ``value`` is made of what torch's restricted unpickler loads: numbers, strings, containers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def raise_if_not_finite(probabilities: Tensor, batch: VideoBatch) -> None:
    """Raise a user error naming the videos whose predicted probabilities are NaN or infinite.

    Bad features are bad data (``DataError``); finite features with non-finite predictions mean the weights are.
    """
    finite = torch.isfinite(probabilities).all(dim=1)
    if bool(finite.all()):
        return
    _raise_if_bad_features(batch, "this batch")
    ids = [video for video, ok in zip(batch.video_ids, finite.tolist()) if not ok]
    raise ConfigError(
        f"the model predicts NaN or infinite scores for videos {_some(ids)}, whose features are finite: its weights "
        "are not finite (a diverged fit); use an earlier checkpoint"
    )


def _raise_if_bad_features(batch: VideoBatch, where: str) -> None:
    """Raise ``DataError`` naming the videos of ``batch`` whose features hold NaN or infinite values, if any."""
    bad: set[str] = set()
    for view in batch.views.values():
        rows = ~torch.isfinite(view.frames).flatten(1).all(dim=1)
        bad.update(video for video, is_bad in zip(batch.video_ids, rows.tolist()) if is_bad)
    if bad:
        raise DataError(
            f"videos {_some(sorted(bad))} in {where} have NaN or infinite features: the data is damaged, not the "
            "model; convert it again (conversion refuses such values) or remove those videos"
        )


def _some(ids: list[str], shown: int = 5) -> str:
    """``'a', 'b' and 3 more``."""
    listed = ", ".join(repr(i) for i in ids[:shown])
    return listed + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def loss_log_names(parts: dict[str, Tensor], role: str = "") -> dict[str, Tensor]:
    """``DistillLoss`` parts -> log names: ``"total"`` as ``<role>/loss``, each term as ``<role>/loss/<term>``."""
    prefix = f"{role}/loss" if role else "loss"
    return {prefix if name == "total" else f"{prefix}/{name}": value for name, value in parts.items()}


def describe(encoder: VideoEncoder) -> str:
    """``Family(size=..., ...)`` from ``encoder.architecture()``, for error messages."""
    arch = dict(encoder.architecture())
    family = arch.pop("family", type(encoder).__name__)
    return f"{family}({', '.join(f'{key}={value}' for key, value in arch.items())})"


def same_family(teacher: VideoEncoder, student: VideoEncoder) -> bool:
    """Whether the two encoders have one architecture up to ``student_free_keys`` (e.g. H-RNN's block length)."""
    free = set(teacher.student_free_keys) | set(student.student_free_keys)
    fixed_teacher = {k: v for k, v in teacher.architecture().items() if k not in free}
    fixed_student = {k: v for k, v in student.architecture().items() if k not in free}
    return fixed_teacher == fixed_student


def check_same_family(teacher: VideoEncoder, student: VideoEncoder, teacher_name: str) -> None:
    """Raise ``ConfigError`` unless the two encoders have one architecture up to ``student_free_keys``.

    Args:
        teacher: the teacher's encoder.
        student: the student's encoder.
        teacher_name: how the message names the teacher, e.g. "teacher checkpoint t.ckpt".
    """
    if not same_family(teacher, student):
        raise ConfigError(
            f"{teacher_name} is {describe(teacher)} but the student is {describe(student)}: "
            "use a student of the teacher's family and sizes"
        )


def check_blocks(encoder: VideoEncoder, sampler: FrameSampler, role: str, adapt: bool = True) -> None:
    """Adapt ``encoder`` to the sampler's view (``for_frames``; unless ``adapt`` is False), then raise
    ``ConfigError`` unless a block encoder's blocks tile the sampler's k frames exactly.

    An encoder that cuts the frames into blocks (H-RNN) reports ``block_length`` in its architecture; k frames
    that it does not divide would leave a short last block on every video.
    """
    if adapt:
        encoder.for_frames(sampler.k)
    arch = encoder.architecture()
    block = arch.get("block_length")
    k = sampler.k
    if block is None or k is None or k % block == 0:
        return
    divisors = [d for d in range(1, k + 1) if k % d == 0]
    below = max((d for d in divisors if d < block), default=None)
    above = min((d for d in divisors if d > block), default=None)
    lengths = " or ".join(str(d) for d in (above, below) if d is not None)
    ks = " or ".join(str(m) for m in ((k // block) * block, (k // block + 1) * block) if m > 0)
    raise ConfigError(
        f"k={k} is not a multiple of the {role}'s {arch.get('family', type(encoder).__name__)} "
        f"block_length={block}: use block_length {lengths}, or k {ks}"
    )


def check_teacher_comparisons(criterion: DistillLoss, teacher_sampler: FrameSampler) -> None:
    """Raise ``ConfigError`` if L_rep^I is asked of a teacher view whose slots are not the video's frames."""
    uses_intermediate = any(isinstance(t, IntermediateRepresentationLoss) for t in criterion.terms.values())
    if uses_intermediate and teacher_sampler.k is not None:
        raise ConfigError(
            "IntermediateRepresentationLoss reads the teacher's state at the student's frames, so the teacher must "
            f"see all frames, but teacher_sampler keeps k={teacher_sampler.k}: use AllFramesSampler"
        )
