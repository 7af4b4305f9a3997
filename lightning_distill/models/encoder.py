"""The contract every video encoder keeps, so teacher, student and losses can treat families alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_distill.class_paths import Keyed


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes:
        representation: (B, E) the video representation E: what L_rep matches and the head classifies.
        intermediate: (B, T, H) a state per input slot (the paper's I_T / I_S for L_rep^I), zero at padded
            slots, or None.
    """

    representation: Tensor
    intermediate: Tensor | None = None


class VideoEncoder(Keyed, nn.Module, ABC):
    """Frames (B, T, D) + mask (B, T) -> ``EncoderOutput``. Knows nothing of labels, files or Lightning.

    Padded slots (mask False) must not change the output: a video gives the same representation however much
    padding follows it, in eval and in training mode (batch statistics count real frames only). The real
    frames of a video are a prefix of its slots, as ``FrameView`` lays them out.

    Constructor defaults are the paper's sizes; ``tiny()`` builds the same class with small sizes.

    Attributes:
        input_dim: D, features per frame (1152 for YouTube-8M rgb+audio).
        output_dim: E, size of ``representation``.
        key: the family's name (``hrnn``): experiment grids say ``family: hrnn`` and its config part is
            ``configs/family/<key>.yaml``; a subclass that sets it is registered in ``VideoEncoder.registry``.
    """

    input_dim: int
    output_dim: int
    registry: ClassVar[dict[str, type[VideoEncoder]]] = {}

    @abstractmethod
    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        """(B, T, D) float frames, (B, T) bool mask -> ``EncoderOutput``."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """Family name and every size that fixes the parameter shapes, e.g. ``{"family": "HRNN", ...}``.

        Two encoders whose representations L_rep can compare agree on everything here except the entries
        listed in ``student_free_keys`` (e.g. H-RNN's block length).
        """

    student_free_keys: tuple[str, ...] = ()

    def for_frames(self, k: int | None) -> None:
        """Adapt to the view the encoder will read: k chosen frames per video, or None for all of them. Called by
        the module that owns the encoder; most encoders need nothing (H-RNN picks its block length)."""

    def forward_all_frames(self, frames: Tensor) -> Tensor:
        """(B, T, D) frames, every slot a real frame -> (B, E) representation, as ``forward`` with an all-True mask.

        What an exported network runs (``deployment/``): no data-dependent shapes, so ``torch.export`` and ONNX can
        trace it. Encoders whose ``forward`` needs masks to skip padding (packed LSTMs) override it.
        """
        mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return self(frames, mask).representation

    @classmethod
    def tiny(cls, **overrides: Any) -> VideoEncoder:
        """The same architecture with small sizes (for tests and the CPU demo); ``overrides`` set any argument."""
        raise NotImplementedError(f"{cls.__name__} defines no tiny() configuration")
