"""Frames chosen per video by a trained audio skim (beyond the paper): ``SkimSampler``.

A k-frame student normally reads the same Uniform-k frames of every video. With ``SkimSampler`` it reads, in each
of k equal segments, the frame that a trained ``AudioSkimEncoder`` (``models/skim.py``) scores highest from its
128 audio features; the scorer is a student of the teacher too (``configs/role/skim-scorer.yaml``). Any student
takes it as its ``sampler`` (and, to train on such frames, its ``train_sampler``)::

    sampler:
      class_path: lightning_distill.training.skim_sampler.SkimSampler
      init_args: {k: 6, scorer_checkpoint: runs/skim_scorer/latest/checkpoints/best.ckpt}

What it costs: the audio of every frame (128 of a frame's 1152 features) and the scorer's small per-frame network,
besides the student's k full frames. The store keeps a frame's rgb and audio side by side, so on disk reading every
frame's audio touches every frame's page: the saving is in the network's FLOPs, not in bytes read from disk.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_distill.class_paths import class_path
from lightning_distill.data.batch import FrameView
from lightning_distill.data.normalization import (
    FeatureNormalizer,
    NoNormalization,
    view_inputs,
)
from lightning_distill.data.samplers import ScoredSampler
from lightning_distill.data.yt8m import AUDIO_DIM, FEATURE_DIM
from lightning_distill.errors import ConfigError
from lightning_distill.models.modes import eval_mode
from lightning_distill.models.skim import AudioSkimEncoder
from lightning_distill.training.checkpoints import (
    checkpoint_class_path,
    load_module,
    read_checkpoint,
)
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher_targets import recorded_normalization


class SkimSampler(ScoredSampler):
    """The best frame of each of k segments by a trained audio skim (see the module docstring).

    The scorer is loaded on first use, on the CPU, in the process that reads the data (each loader worker loads
    its own copy).

    Args:
        k: frames read in full per video.
        scorer_checkpoint: a ``StudentModule`` checkpoint whose encoder is an ``AudioSkimEncoder``.
    """

    def __init__(self, k: int, scorer_checkpoint: str) -> None:
        super().__init__(k)
        self.scorer_checkpoint = scorer_checkpoint
        self._scorer: tuple[AudioSkimEncoder, FeatureNormalizer] | None = None
        self._lock = threading.Lock()

    def scores(self, frames: Tensor, mask: Tensor) -> Tensor:
        encoder, normalization = self.scorer()
        positions = torch.zeros_like(mask, dtype=torch.long)  # unused by the skim
        view = view_inputs(FrameView(frames=frames, mask=mask, positions=positions), normalization)
        with torch.no_grad(), eval_mode(encoder):
            return encoder.frame_scores(view.frames, mask)

    def scorer(self) -> tuple[AudioSkimEncoder, FeatureNormalizer]:
        """The trained skim encoder and the input normalisation it was trained on (loaded once).

        Raises:
            ConfigError: the checkpoint is missing, unreadable or not an audio skim's.
        """
        with self._lock:
            if self._scorer is None:
                self._scorer = _load_scorer(self.scorer_checkpoint)
            return self._scorer

    def selection_cost(self, lengths: Tensor) -> dict[str, Tensor]:
        """Per video: the skim's network on every frame (GFLOPs), and the audio of the frames not chosen (the
        chosen ones' is read with them), in frames of FEATURE_DIM features."""
        lengths = lengths.double()
        return {
            "selection_gflops": lengths * self.scorer()[0].flops_per_frame() / 1e9,
            "selection_frames": (lengths - self.k).clamp(min=0) * AUDIO_DIM / FEATURE_DIM,
        }

    def __getstate__(self) -> dict[str, Any]:
        # A loader worker (another process) loads its own scorer; a lock cannot be pickled.
        return {"k": self.k, "scorer_checkpoint": self.scorer_checkpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"SkimSampler(k={self.k}, scorer_checkpoint={self.scorer_checkpoint!r})"


def _load_scorer(path: str) -> tuple[AudioSkimEncoder, FeatureNormalizer]:
    if not Path(path).is_file():
        raise ConfigError(f"skim scorer checkpoint {path} does not exist: train one (configs/role/skim-scorer.yaml)")
    stored = checkpoint_class_path(read_checkpoint(path, weights=False))
    module = load_module(StudentModule, path) if stored == class_path(StudentModule) else None
    if module is None or not isinstance(module.encoder, AudioSkimEncoder):
        holds = stored.rsplit(".", 1)[-1] if module is None else f"{type(module.encoder).__name__} student"
        raise ConfigError(
            f"checkpoint {path} holds a {holds}, not an AudioSkimEncoder: give SkimSampler a scorer trained with "
            "configs/role/skim-scorer.yaml"
        )
    return module.encoder, recorded_normalization(path) or NoNormalization()


__all__ = ["SkimSampler"]
