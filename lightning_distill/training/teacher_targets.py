"""Frozen teachers for the modules that learn from them: loading, the inputs each was trained on, cached targets.

A Serial student (``StudentModule``) and a frame-selection gate (``EarlyExitModule``) both learn from teachers
that never change; this module loads them frozen and has the data module cache their video-level outputs once
(``data/target_cache.py``), each computed on the inputs that teacher was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.normalization import FeatureNormalizer, normalizer_from_config
from lightning_distill.data.samplers import FrameSampler
from lightning_distill.data.target_cache import TEACHER_TARGETS, CacheKind, TargetCache
from lightning_distill.errors import ConfigError
from lightning_distill.models.modes import eval_mode
from lightning_distill.training.checkpoints import load_module, read_checkpoint
from lightning_distill.training.module import INPUT_NORMALIZATION
from lightning_distill.training.teacher import TeacherModule


def load_frozen_teacher(path: str) -> TeacherModule:
    """A teacher checkpoint as a frozen ``TeacherModule`` (on the CPU).

    Raises:
        ConfigError: the file does not exist (or is not a safe, readable checkpoint).
    """
    if not Path(path).is_file():
        raise ConfigError(f"teacher checkpoint {path} does not exist: train a TeacherModule with `vdistill fit`")
    teacher = load_module(TeacherModule, path)
    # Frozen weights but not LightningModule.freeze(): its eval() would leave the teacher in eval mode at the
    # start of training, which Lightning warns about; it runs in eval mode just where it runs (video_outputs).
    teacher.requires_grad_(False)
    return teacher


def recorded_normalization(path: str) -> FeatureNormalizer | None:
    """The input normalisation the model of checkpoint ``path`` was trained on, or None if it records none (a
    checkpoint written before vdistill kept it)."""
    record = read_checkpoint(path, weights=False).get(INPUT_NORMALIZATION)
    return None if record is None else normalizer_from_config(record, f"checkpoint {path}")


LIVE_TEACHER_REMEDY = (
    "use teacher_targets: cached (each teacher's targets are computed on its own inputs) or set data.normalization"
)


def check_same_inputs(path: str, datamodule: Any, role: str = "teacher", remedy: str = LIVE_TEACHER_REMEDY) -> None:
    """Raise ``ConfigError`` if a frozen model run on the data module's frames (a live teacher, a skim's reader)
    would see inputs normalised otherwise than those it was trained on; ``role`` and ``remedy`` word the message."""
    recorded = recorded_normalization(path)
    current = getattr(datamodule, "normalization", None)
    if recorded is not None and current is not None and repr(recorded) != repr(current):
        raise ConfigError(
            f"{role} checkpoint {path} was trained on {recorded!r} inputs but the data gives {current!r}: {remedy}"
        )


def video_outputs(teacher: nn.Module, view: FrameView) -> dict[str, Tensor]:
    """What a cache keeps of the teacher's outputs for a view: those of the frozen teacher, in eval mode as where
    it runs live (dropout off, batch-norm running statistics), not the noisy train-mode outputs of a fresh load."""
    with eval_mode(teacher):
        output = teacher(view)
    return {"representation": output.representation, "probabilities": output.probabilities}


def cached_targets(trainer: Trainer, teacher: TeacherModule, path: str, sampler: FrameSampler) -> TargetCache:
    """The teacher's outputs for every training video of the trainer's data module, built once and reused.

    Args:
        trainer: the fit's trainer: its data module, device and precision.
        teacher: the frozen teacher of checkpoint ``path``.
        path: its checkpoint (part of the cache's key; also records its inputs' normalisation).
        sampler: the teacher's frames.
    """
    teacher.to(trainer.strategy.root_device)
    return cached_outputs(
        trainer,
        lambda batch: video_outputs(teacher, batch.views["teacher"]),
        path,
        sampler,
        recorded_normalization(path),
        "teacher targets",
    )


def cached_outputs(
    trainer: Trainer,
    model: Callable[[VideoBatch], dict[str, Tensor]],
    checkpoint: str,
    sampler: FrameSampler,
    normalization: FeatureNormalizer | None,
    label: str,
    *,
    split: str = "train",
    kind: CacheKind = TEACHER_TARGETS,
) -> TargetCache:
    """A frozen model's outputs for every video of a split of the trainer's data module, built once (on the fit's
    device, under its precision) and reused: ``YT8MDataModule.teacher_targets``, which says what the arguments are.
    Logs under ``label`` whether it was built or reused."""
    cache, built = trainer.datamodule.teacher_targets(
        model,
        checkpoint=checkpoint,
        sampler=sampler,
        device=trainer.strategy.root_device,
        precision=str(trainer.precision),
        context=trainer.precision_plugin.forward_context,
        normalization=normalization,
        split=split,
        kind=kind,
    )
    action = "built" if built else "reused"
    rank_zero_info(f"{label}: cached, {action} {cache.path} (the build took {cache.build_seconds:.1f} s)")
    return cache


def load_weights(path: str, parts: dict[str, nn.Module], argument: str) -> None:
    """Load a module checkpoint's weights of each named part (``{"encoder": ..., "head": ...}``).

    Raises:
        ConfigError: the checkpoint lacks a part or holds it at other sizes, naming ``argument`` (the setting that
            gave ``path``).
    """
    state = read_checkpoint(path)["state_dict"]
    for name, part in parts.items():
        prefix = f"{name}."
        weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        try:
            part.load_state_dict(weights)
        except RuntimeError:
            raise ConfigError(
                f"{argument} {path} does not hold this model's {name} weights (missing or other sizes): "
                "give a checkpoint of a module with the same encoder and head"
            ) from None


__all__ = [
    "cached_outputs",
    "cached_targets",
    "check_same_inputs",
    "load_frozen_teacher",
    "load_weights",
    "recorded_normalization",
    "video_outputs",
]
