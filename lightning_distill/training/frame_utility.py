"""A skim that learns what reading a frame in full is worth (frames chosen per video, beyond the paper).

A skim that ranks frames by how much its features stand out (``SkimEncoder(scoring="rise")``) chose no better than
Uniform-k on data it was not tuned to: what stands out need not be what evidences a label. ``FrameUtilityModule``
gives the skim a target for each frame instead: the frame's *utility*, how well the frozen teacher, shown that frame
alone, predicts the video's labels. A linear read-out of the skim's per-frame features (``SkimEncoder(scoring=
"utility")``) regresses it, and ``SkimSampler`` then reads the frame of highest estimated utility in each of k
segments. The teacher reads every frame of the training and validation videos once per reader and data, one frame at
a time, and the utilities are kept beside the store like a teacher's targets (``FRAME_UTILITY``); choosing at test
time needs only the skim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.normalization import FeatureNormalizer
from lightning_distill.data.samplers import AllFramesSampler
from lightning_distill.data.target_cache import FRAME_UTILITY, TargetCache
from lightning_distill.errors import ConfigError
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.modes import eval_mode
from lightning_distill.models.skim import SkimEncoder
from lightning_distill.training.module import save_plain_hyperparameters
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher import TeacherModule
from lightning_distill.training.teacher_targets import (
    cached_outputs,
    check_same_inputs,
    load_frozen_teacher,
    recorded_normalization,
)

# Frames the reader classifies at once: each is a one-frame video, so a batch of 64 videos is ~10^4 of them.
READER_CHUNK = 4096


def frame_utility(reader: nn.Module, view: FrameView, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Each real frame's utility for its video's labels, standardised within the video.

    A frame's utility is ``sum over the video's labels c of log p_c``, p the probabilities ``reader`` gives the frame
    shown alone: high where the frame evidences the labels. Standardised to mean 0 and std 1 over each video's real
    frames, since choosing compares frames of one video only.

    Args:
        reader: a frozen classifier of views (a ``TeacherModule``), run in eval mode without gradients.
        view: (B, T) frames, normalised as ``reader`` was trained.
        labels: (B, C) multi-hot labels.

    Returns:
        (B, T) utilities (0 where undefined), and (B, T) bool: where defined (real frames of labelled videos with
        two or more frames).
    """
    frames = view.frames[view.mask][:, None]  # (N, 1, D): every real frame as a one-frame video
    positions = view.positions[view.mask][:, None]
    one = torch.ones(positions.shape, dtype=torch.bool, device=positions.device)
    with eval_mode(reader), torch.no_grad():
        probabilities = torch.cat([
            reader(FrameView(frames[i : i + READER_CHUNK], one[i : i + READER_CHUNK], positions[i : i + READER_CHUNK]))
            .probabilities
            for i in range(0, len(frames), READER_CHUNK)
        ])
    video = view.mask.nonzero()[:, 0]
    utility = torch.zeros(view.mask.shape, dtype=probabilities.dtype, device=probabilities.device)
    utility[view.mask] = (labels[video] * probabilities.log()).sum(dim=1)
    real = view.mask.to(utility.dtype)
    count = real.sum(dim=1, keepdim=True)
    mean = (utility * real).sum(dim=1, keepdim=True) / count.clamp(min=1)
    spread = (((utility - mean) ** 2 * real).sum(dim=1, keepdim=True) / count.clamp(min=1)).sqrt()
    defined = view.mask & (labels.sum(dim=1, keepdim=True) > 0) & (count > 1) & (spread > 0)
    standardised = ((utility - mean) / spread.clamp(min=torch.finfo(spread.dtype).tiny)).masked_fill(~defined, 0.0)
    return standardised, defined


class FrameUtilityModule(StudentModule):
    """A ``SkimEncoder(scoring="utility")`` trained as a skim student (its video-level terms, e.g. L_pred + L_CE) plus
    a per-frame term: the mean squared error between its utility read-out and ``frame_utility`` under the reader.

    Logs ``train/loss/utility`` and, in validation, ``val/utility`` (the same error on the validation videos: the
    metric to keep the best checkpoint by, ``configs/role/utility-skim-scorer.yaml``).

    Args:
        encoder: a ``SkimEncoder`` with ``scoring: utility``.
        num_classes: C, linked from the data module.
        utility_weight: the per-frame term's weight in the total (> 0). The video-level terms are there for the
            skim's features; it is the estimates that choose, and their validation error fell from 0.90 to 0.83 as
            the weight rose from 1 to 30 (independent data, seed 0).
        reader_checkpoint: the ``TeacherModule`` whose one-frame predictions define utility; default: the first
            teacher (``teacher_checkpoint``, else ``ensemble_teachers[0]``). It is shown the skim's frames, so it
            must have been trained on the data's normalisation (not a NeXtVLAD teacher's ReverseWhitening).
        **kwargs: ``StudentModule``'s other arguments.
    """

    def __init__(
        self,
        encoder: VideoEncoder,
        num_classes: int,
        utility_weight: float = 30.0,
        reader_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, num_classes, **kwargs)
        save_plain_hyperparameters(self)
        if not isinstance(encoder, SkimEncoder) or encoder.utility is None:
            raise ConfigError(
                f"FrameUtilityModule trains a skim's utility read-out, but its encoder is {encoder!r}: use "
                "lightning_distill.models.skim.SkimEncoder with scoring: utility"
            )
        if utility_weight <= 0:
            raise ConfigError(
                f"FrameUtilityModule(utility_weight={utility_weight}): the per-frame term needs a weight > 0"
            )
        self.reader_checkpoint = reader_checkpoint or next(iter(self.teacher_paths), None)
        if self.reader_checkpoint is None:
            raise ConfigError(
                "FrameUtilityModule needs a reader whose one-frame predictions define utility: set reader_checkpoint, "
                "teacher_checkpoint or ensemble_teachers"
            )
        self.utility_weight = utility_weight
        # Set while setup builds the caches, kept out of the module's tree: its weights belong to no checkpoint of the
        # skim's.
        self.__dict__["_reader"] = None
        # Split ("train", "val") -> its frames' utility, cached by setup: the reader is frozen and the frames fixed.
        self._caches: dict[str, TargetCache] = {}
        self._utility_error: Tensor | None = None

    def on_teachers_loaded(self, teachers: dict[str, TeacherModule]) -> None:
        # The reader is usually the student's own teacher, just loaded to cache its targets.
        if self.reader_checkpoint in teachers:
            self.__dict__["_reader"] = teachers[self.reader_checkpoint]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage not in ("fit", "validate"):
            return
        check_same_inputs(
            self.reader_checkpoint, self.trainer.datamodule, role="reader",
            remedy="the reader is shown the skim's frames: name a reader trained on these inputs "
            "(reader_checkpoint), e.g. a NetVLAD or H-RNN teacher",
        )
        device = self.trainer.strategy.root_device

        @functools.cache
        def reader() -> TeacherModule:
            # Loaded only to build a cache: a fit whose caches exist reads nothing of the reader but its bytes' hash.
            return (self._reader or load_frozen_teacher(self.reader_checkpoint)).to(device)

        inputs = recorded_normalization(self.reader_checkpoint)
        splits = ("train", "val") if stage == "fit" else ("val",)
        datamodule = self.trainer.datamodule
        self._caches = {
            split: self._utility_cache(reader, inputs, split) for split in splits if datamodule.has_split(split)
        }
        # The caches hold all the reader gives: its weights need not stay in memory.
        self.__dict__["_reader"] = None

    def _utility_cache(
        self, reader: Callable[[], TeacherModule], inputs: FeatureNormalizer | None, split: str
    ) -> TargetCache:
        """``frame_utility`` of every frame of ``split``'s store under ``reader()`` (trained on ``inputs``), computed
        once and kept beside the store (``data/target_cache.py``, ``FRAME_UTILITY``): later fits of any skim with this
        reader and data reuse it, and a fit holds none of it in memory."""
        max_frames = self.trainer.datamodule.max_frames

        def utilities(batch: VideoBatch) -> dict[str, Tensor]:
            utility, defined = frame_utility(reader(), batch.views["teacher"], batch.labels)
            rows = utility.float().masked_fill(~defined, float("nan"))
            return {"utility": F.pad(rows, (0, max_frames - rows.shape[1]), value=float("nan"))}

        return cached_outputs(
            self.trainer, utilities, self.reader_checkpoint, AllFramesSampler(), inputs, f"frame utility ({split})",
            split=split, kind=FRAME_UTILITY,
        )

    def model_step(self, batch: VideoBatch) -> dict[str, ModelOutput]:
        outputs = super().model_step(batch)
        cache = self._caches.get("train" if self.training else "val")
        if cache is not None:
            # Kept for ``losses`` and ``validation_step``, which the base step calls with the outputs alone.
            target, defined = _frame_targets(cache, batch.indices, batch.views["student"].positions)
            estimate = outputs["student"].intermediate.squeeze(-1)
            self._utility_error = ((estimate - target) ** 2 * defined).sum() / defined.sum().clamp(min=1)
        return outputs

    def losses(self, outputs: dict[str, ModelOutput], labels: Tensor) -> dict[str, Tensor]:
        parts = super().losses(outputs, labels)
        error = self._utility_error
        return {**parts, "loss/utility": error, "loss": parts["loss"] + self.utility_weight * error}

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if "val" in self._caches:
            self.log("val/utility", self._utility_error, on_step=False, on_epoch=True, batch_size=len(batch),
                     sync_dist=True)


def _frame_targets(cache: TargetCache, videos: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """The cached utility of each slot's frame (0 where undefined), and where it is defined: (B, T) each, on
    ``positions``' device, for store indices ``videos`` (B,) and frame indices ``positions`` (B, T), -1 at padding."""
    rows = torch.from_numpy(cache.read(videos.cpu().numpy())["utility"].astype(np.float32)).to(positions.device)
    values = rows.gather(1, positions.clamp(min=0))
    defined = (positions >= 0) & ~values.isnan()
    return values.nan_to_num(0.0).masked_fill(~defined, 0.0), defined


__all__ = ["FrameUtilityModule", "frame_utility"]
