"""What one model (encoder + classifier head) produces for one view: everything a loss term may compare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from lightning_distill.data.batch import FrameView
from lightning_distill.models.encoder import VideoEncoder


@dataclass
class ModelOutput:
    """One model's outputs for a batch of B videos seen through a T-slot view.

    Attributes:
        representation: (B, E) the video representation E (the paper's E_T / E_S).
        intermediate: (B, T, H) a state per view slot (I_T / I_S), or None if the encoder keeps none.
        probabilities: (B, C) class probabilities in (0, 1).
        positions: (B, T) long, the frame index in the video of each slot, -1 at padding (the view's); None for
            a teacher's cached targets, which keep video-level outputs only.
        mask: (B, T) bool, True where a slot holds a real frame (the view's); None as ``positions``.
    """

    representation: Tensor
    intermediate: Tensor | None
    probabilities: Tensor
    positions: Tensor | None
    mask: Tensor | None

    @classmethod
    def from_targets(cls, targets: dict[str, Tensor]) -> ModelOutput:
        """A frozen teacher's outputs as cached (``VideoBatch.targets``): representation and probabilities."""
        return cls(targets["representation"], None, targets["probabilities"], None, None)


def classify(encoder: VideoEncoder, head: Callable[[Tensor], Tensor], view: FrameView) -> ModelOutput:
    """Run ``encoder`` then ``head`` (a ``ClassifierHead``, or a function of one) on one view, keeping what the loss
    terms need."""
    encoded = encoder(view.frames, view.mask)
    return ModelOutput(
        representation=encoded.representation,
        intermediate=encoded.intermediate,
        probabilities=head(encoded.representation),
        positions=view.positions,
        mask=view.mask,
    )
