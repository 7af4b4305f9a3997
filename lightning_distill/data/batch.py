"""The batch a ``YT8MDataModule`` yields: one or more *views* of the same videos.

A view is what one model sees: the teacher view holds every frame up to ``max_frames``, a student view the k
frames its sampler chose. Both come from the frame store in one read per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class FrameView:
    """The frames one model sees, padded to a common length T.

    Attributes:
        frames: (B, T, D) features, D = 1152 (rgb then audio). uint8 (quantised) or float32 (video-level stores)
            as loaded; float32, dequantised, normalised and exactly zero at padding once the data module's
            ``on_after_batch_transfer`` has run on the device.
        mask: (B, T) bool, True where a slot holds a real frame.
        positions: (B, T) long, the frame index in the original video of each slot, -1 at padding. L_rep^I
            uses it to find the teacher's state at the student's frames.
    """

    frames: Tensor
    mask: Tensor
    positions: Tensor


@dataclass
class VideoBatch:
    """B videos with their labels and the views the LightningModule asked for.

    Attributes:
        video_ids: B video ids as in the source records.
        labels: (B, C) float32 multi-hot ground truth (all zero for unlabelled splits).
        lengths: (B,) long, each video's true frame count, capped at ``max_frames``.
        views: view name ("teacher", "student") -> ``FrameView``.
        indices: (B,) long, the videos' indices in their frame store.
        targets: frozen teachers' cached outputs for these videos (``data/target_cache.py``), one entry per
            teacher: ``{"representation": (B, E), "probabilities": (B, C)}`` float32; None without targets.
    """

    video_ids: list[str]
    labels: Tensor
    lengths: Tensor
    views: dict[str, FrameView] = field(default_factory=dict)
    indices: Tensor | None = None
    targets: list[dict[str, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.video_ids)
