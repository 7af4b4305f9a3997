"""One decoded YouTube-8M video, as the TFRecord reader yields it and the frame store returns it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VideoRecord:
    """A video's id, labels and features.

    Attributes:
        video_id: the record's id (context ``id`` in 2018+, ``video_id`` in 2017).
        labels: (L,) int64 class ids, possibly empty (unlabelled test splits).
        rgb: (n, 1024) uint8 quantised frames; (1, 1024) float32 ``mean_rgb`` for video-level records.
        audio: (n, 128) uint8 quantised frames; (1, 128) float32 ``mean_audio`` for video-level records.
    """

    video_id: str
    labels: np.ndarray
    rgb: np.ndarray
    audio: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])
