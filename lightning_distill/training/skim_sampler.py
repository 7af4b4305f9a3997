"""Frames chosen per video by a trained skim (beyond the paper): ``SkimSampler``.

A k-frame student normally reads the same Uniform-k frames of every video. With ``SkimSampler`` it reads, in each
of k equal segments, the frame that a trained ``SkimEncoder`` (``models/skim.py``) scores highest from a few of its
features (by default its 128 audio features); the scorer is a student of the teacher too
(``configs/role/skim-scorer.yaml``). Any student takes it as its ``sampler`` (and, to train on such frames, its
``train_sampler``)::

    sampler:
      class_path: lightning_distill.training.skim_sampler.SkimSampler
      init_args: {k: 6, scorer_checkpoint: runs/skim_scorer/latest/checkpoints/best.ckpt}

What it reads: the skim's features of every frame, or of every stride-th (``SkimEncoder.stride``; by default the 128
audio features of a frame's 1152), then the k chosen frames whole. What it costs besides: the skim's small per-frame
network. The data module keeps the skimmed features in a column store beside the frame store
(``data/column_store.py``), so reading them does not page whole frames in from disk.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_distill.class_paths import class_path
from lightning_distill.data.normalization import FrameL2Normalization, NoNormalization, ReverseWhitening
from lightning_distill.data.samplers import ScoredSampler
from lightning_distill.data.yt8m import FEATURE_DIM, dequantize
from lightning_distill.errors import ConfigError
from lightning_distill.models.modes import eval_mode
from lightning_distill.models.skim import SkimEncoder
from lightning_distill.training.checkpoints import checkpoint_class_path, load_module, read_checkpoint
from lightning_distill.training.frame_utility import FrameUtilityModule
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher_targets import recorded_normalization

# The data normalisations that scale a frame's audio (rgb) as a whole or leave it alone: the skim, which scales each
# modality's slice of a frame to unit length, sees the same from raw features as it saw in training after them.
AUDIO_SHAPE_KEEPING = (NoNormalization, FrameL2Normalization, ReverseWhitening)
RGB_SHAPE_KEEPING = (NoNormalization, FrameL2Normalization)


class SkimSampler(ScoredSampler):
    """The best frame of each of k segments by a trained skim (see the module docstring).

    The scorer is loaded on first use, on the CPU, in the process that reads the data (each loader worker loads
    its own copy).

    Args:
        k: frames read in full per video.
        scorer_checkpoint: a ``StudentModule`` checkpoint whose encoder is a ``SkimEncoder``.
    """

    def __init__(self, k: int, scorer_checkpoint: str) -> None:
        super().__init__(k)
        self.scorer_checkpoint = scorer_checkpoint
        self._scorer: SkimEncoder | None = None
        self._lock = threading.Lock()

    @property
    def columns(self) -> tuple[slice, ...]:
        """The features of every frame that the scorer reads."""
        return self.scorer().columns

    def scores(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, S) uint8 ``columns`` of every frame, (B, T) mask -> (B, T) the skim's scores (-inf at padding)."""
        skimmed = torch.from_numpy(dequantize(frames.numpy()))  # on the CPU: the loader's threads call this
        encoder = self.scorer()
        with torch.no_grad(), eval_mode(encoder):
            return encoder.frame_scores(skimmed, mask)

    def scorer(self) -> SkimEncoder:
        """The trained skim (loaded once).

        Raises:
            ConfigError: the checkpoint is missing, unreadable or not a skim's.
        """
        with self._lock:
            if self._scorer is None:
                self._scorer = _load_scorer(self.scorer_checkpoint)
            return self._scorer

    def skimmed_positions(self, lengths: Tensor) -> Tensor:
        """The frames the skim reads to choose: every frame, or every ``stride``-th (``SkimEncoder.stride``)."""
        return self.scorer().skimmed_positions(lengths)

    def selection_cost(self, lengths: Tensor) -> dict[str, Tensor]:
        """Per video: the skim's network on every frame it skims (GFLOPs), and its features of the skimmed frames
        not chosen (the chosen ones' are read with them), in frames of FEATURE_DIM features."""
        scorer = self.scorer()
        skimmed = (self.skimmed_positions(lengths) >= 0).sum(dim=1).double()
        return {
            "selection_gflops": skimmed * scorer.flops_per_frame() / 1e9,
            "selection_frames": (skimmed - self.k).clamp(min=0) * (scorer.rgb_dims + scorer.audio_dims) / FEATURE_DIM,
        }

    def __getstate__(self) -> dict[str, Any]:
        # A loader worker (another process) loads its own scorer; a lock cannot be pickled.
        return {"k": self.k, "scorer_checkpoint": self.scorer_checkpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"SkimSampler(k={self.k}, scorer_checkpoint={self.scorer_checkpoint!r})"


def _load_scorer(path: str) -> SkimEncoder:
    if not Path(path).is_file():
        raise ConfigError(f"skim scorer checkpoint {path} does not exist: train one (configs/role/skim-scorer.yaml)")
    stored = checkpoint_class_path(read_checkpoint(path, weights=False))
    scorer_classes = {class_path(cls): cls for cls in (StudentModule, FrameUtilityModule)}
    module = load_module(scorer_classes[stored], path) if stored in scorer_classes else None
    if module is None or not isinstance(module.encoder, SkimEncoder):
        holds = stored.rsplit(".", 1)[-1] if module is None else f"{type(module.encoder).__name__} student"
        raise ConfigError(
            f"checkpoint {path} holds a {holds}, not a SkimEncoder: give SkimSampler a scorer trained with "
            "configs/role/skim-scorer.yaml"
        )
    encoder = module.encoder
    keeping = RGB_SHAPE_KEEPING if encoder.rgb_dims else AUDIO_SHAPE_KEEPING
    normalization = recorded_normalization(path)
    if normalization is not None and not isinstance(normalization, keeping):
        raise ConfigError(
            f"skim {path} was trained on {normalization!r} inputs, which may change the features it reads one by "
            "one, so its scores of raw features would not be those it learned: train it with a normalisation of "
            + ", ".join(cls.__name__ for cls in keeping)
        )
    return encoder


__all__ = ["SkimSampler"]
