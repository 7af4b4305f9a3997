"""A skim of every frame's audio that says which frames are worth reading in full (frames chosen per video).

``AudioSkimEncoder`` looks only at the 128 audio features of each frame: a small per-frame network, then a max
over the video's frames (multiple-instance learning: a video has a label if some frame shows it). Trained as a
student of the all-frames teacher (its probabilities through L_pred, the labels through L_CE, see
``configs/role/skim-scorer.yaml``), each of its features learns to fire on the frames that evidence some label.
``frame_scores`` then ranks a video's frames by how far one of those features rises above its level over the
whole video, which ranks the moments that stand out above what is present all along (a vertical's constant
evidence, the scene), and intro and end-screen frames low. ``training/skim_sampler.SkimSampler`` reads the
best-scoring frame of each of k segments in full.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.data.yt8m import AUDIO_DIM, FEATURE_DIM
from lightning_distill.models.encoder import EncoderOutput, VideoEncoder


class AudioSkimEncoder(VideoEncoder):
    """Per-frame audio features (two layers, ReLU), max-pooled over the real frames.

    Representation: the pooled features, (B, hidden). No intermediate states.

    Args:
        hidden: features per frame (and the representation's size).
        input_dim: D, features per frame the data gives (rgb then audio); only the last ``audio_dim`` are read.
        audio_dim: trailing features of a frame that are audio.
    """

    def __init__(self, hidden: int = 16, input_dim: int = FEATURE_DIM, audio_dim: int = AUDIO_DIM) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.audio_dim = audio_dim
        self.hidden = hidden
        self.output_dim = hidden
        self.layers = nn.Sequential(nn.Linear(audio_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def frame_features(self, frames: Tensor) -> Tensor:
        """(B, T, D) frames (or their last ``audio_dim`` features alone) -> (B, T, hidden) features of each frame's
        audio, scaled to unit length first: the data normalisations scale a frame's audio as a whole (the default
        joint L2 norm by the rgb's size too), so the features, and the scores, depend on the audio alone, which is all
        that ``SkimSampler`` reads."""
        return self.layers(F.normalize(frames[..., -self.audio_dim :].float(), dim=-1))

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        features = self.frame_features(frames).masked_fill(~mask[..., None], float("-inf"))
        # ReLU features are >= 0, so an all-padding row (never given) would be the only source of -inf.
        return EncoderOutput(representation=features.amax(dim=1).clamp(min=0))

    def frame_scores(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D) frames, (B, T) mask -> (B, T) how much each frame stands out: the largest rise of one of its
        features above that feature's mean over the video's real frames; -inf at padding."""
        features = self.frame_features(frames)
        real = mask[..., None].to(features.dtype)
        mean = (features * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp(min=1)
        return (features - mean).amax(dim=2).masked_fill(~mask, float("-inf"))

    def flops_per_frame(self) -> int:
        """FLOPs of ``frame_scores`` per frame read (2 per multiply-add of the layers)."""
        return sum(2 * m.in_features * m.out_features for m in self.layers if isinstance(m, nn.Linear))

    def architecture(self) -> dict[str, Any]:
        return {"family": "AudioSkim", "hidden": self.hidden, "input_dim": self.input_dim, "audio_dim": self.audio_dim}

    @classmethod
    def tiny(cls, **overrides: Any) -> AudioSkimEncoder:
        """The same sizes: the skim is small already (16 features per frame)."""
        return cls(**overrides)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, audio_dim={self.audio_dim}"


__all__ = ["AudioSkimEncoder"]
