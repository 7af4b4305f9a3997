"""A skim of a few features of every frame that says which frames are worth reading in full (frames chosen per
video).

``SkimEncoder`` looks at a cheap slice of each frame: its leading ``audio_dims`` audio features (all 128 by
default: the audio skim) and its leading ``rgb_dims`` rgb features (none by default). YouTube-8M's features are PCA
components in order of variance, so a modality's leading features are a low-rank summary of it, stored with every
frame already. A small per-frame network runs on the slice, then a max over the video's frames (multiple-instance
learning: a video has a label if some frame shows it). Trained as a student of the all-frames teacher (its
probabilities through L_pred, the labels through L_CE, see ``configs/role/skim-scorer.yaml``), each of its features
learns to fire on the frames that evidence some label. ``frame_scores`` then ranks a video's frames by how far one
of those features rises above its level over the whole video, which ranks the moments that stand out above what is
present all along (a vertical's constant evidence, the scene), and intro and end-screen frames low.
``training/skim_sampler.SkimSampler`` reads the best-scoring frame of each of k segments in full.

``scoring: utility`` scores a frame instead by a learned estimate of what reading it in full is worth: a linear
read-out of its features trained to predict the frame's utility, how well the teacher classifies the video's labels
from that frame alone (``training/frame_utility.FrameUtilityModule``). ``stride`` skims every stride-th frame only
(events last seconds, so a sparse skim still finds them), which divides what the skim reads.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.data.yt8m import AUDIO_DIM, FEATURE_DIM, RGB_DIM
from lightning_distill.errors import ConfigError
from lightning_distill.models.encoder import EncoderOutput, VideoEncoder


class SkimEncoder(VideoEncoder):
    """Per-frame features of a slice of each frame (two layers, ReLU), max-pooled over the real frames.

    Representation: the pooled features, (B, hidden). Intermediate states: with ``scoring: utility``, each frame's
    estimated utility, (B, T, 1); none otherwise.

    Args:
        hidden: features per frame (and the representation's size).
        rgb_dims: leading rgb features of a frame that the skim reads (0: none).
        audio_dims: leading audio features of a frame that the skim reads (0: none).
        input_dim: D, features per frame the data gives (1024 rgb, then 128 audio).
        scoring: how ``frame_scores`` ranks frames: ``rise`` (how far a feature rises above its video mean) or
            ``utility`` (a learned utility read-out, trained by ``FrameUtilityModule``).
        stride: choosing frames, the skim reads frames 0, stride, 2 stride, ... only.
    """

    def __init__(
        self,
        hidden: int = 16,
        rgb_dims: int = 0,
        audio_dims: int = AUDIO_DIM,
        input_dim: int = FEATURE_DIM,
        scoring: Literal["rise", "utility"] = "rise",
        stride: int = 1,
    ) -> None:
        super().__init__()
        if not (0 <= rgb_dims <= RGB_DIM and 0 <= audio_dims <= AUDIO_DIM and rgb_dims + audio_dims > 0):
            raise ConfigError(
                f"SkimEncoder(rgb_dims={rgb_dims}, audio_dims={audio_dims}): read 0..{RGB_DIM} rgb and 0..{AUDIO_DIM} "
                "audio features, at least one"
            )
        if scoring not in ("rise", "utility"):
            raise ConfigError(f"SkimEncoder(scoring={scoring!r}): choose rise or utility")
        if stride < 1:
            raise ConfigError(f"SkimEncoder(stride={stride}): skim every frame (1) or every n-th frame (n > 1)")
        self.input_dim = input_dim
        self.rgb_dims = rgb_dims
        self.audio_dims = audio_dims
        self.hidden = hidden
        self.output_dim = hidden
        self.scoring = scoring
        self.stride = stride
        self.layers = nn.Sequential(
            nn.Linear(rgb_dims + audio_dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.utility = nn.Linear(hidden, 1) if scoring == "utility" else None

    @property
    def columns(self) -> tuple[slice, ...]:
        """The features of a frame that the skim reads, as slices of its FEATURE_DIM, in order."""
        parts = (slice(0, self.rgb_dims), slice(RGB_DIM, RGB_DIM + self.audio_dims))
        return tuple(part for part in parts if part.stop > part.start)

    def skimmed(self, frames: Tensor) -> Tensor:
        """(B, T, D) whole frames -> (B, T, rgb_dims + audio_dims): the ``columns`` that the skim reads."""
        return torch.cat([frames[..., part] for part in self.columns], dim=-1)

    def frame_features(self, skimmed: Tensor) -> Tensor:
        """(B, T, rgb_dims + audio_dims) skimmed frames -> (B, T, hidden) features of each frame.

        Each modality's slice is scaled to unit length first: the data normalisations that the scorer accepts scale
        a frame as a whole (the default joint L2 norm) or leave it, so the features, and the scores, depend on the
        slice alone, which is all that ``SkimSampler`` reads.
        """
        parts = skimmed.float().split([self.rgb_dims, self.audio_dims], dim=-1)
        return self.layers(torch.cat([F.normalize(part, dim=-1) for part in parts], dim=-1))

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        features = self.frame_features(self.skimmed(frames))
        padding = ~mask[..., None]
        utility = self.utility(features).masked_fill(padding, 0.0) if self.utility is not None else None
        features = features.masked_fill(padding, float("-inf"))
        # ReLU features are >= 0, so an all-padding row (never given) would be the only source of -inf.
        return EncoderOutput(representation=features.amax(dim=1).clamp(min=0), intermediate=utility)

    def frame_scores(self, skimmed: Tensor, mask: Tensor) -> Tensor:
        """(B, T, rgb_dims + audio_dims) skimmed frames, (B, T) mask -> (B, T) scores, -inf at padding: the frame's
        estimated utility (``scoring: utility``), or how much it stands out: the largest rise of one of its
        features above that feature's mean over the video's real frames."""
        features = self.frame_features(skimmed)
        if self.utility is not None:
            return self.utility(features).squeeze(-1).masked_fill(~mask, float("-inf"))
        real = mask[..., None].to(features.dtype)
        mean = (features * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp(min=1)
        return (features - mean).amax(dim=2).masked_fill(~mask, float("-inf"))

    def skimmed_positions(self, lengths: Tensor) -> Tensor:
        """(B,) lengths -> (B, S) long: the frames the skim reads to choose (every ``stride``-th), -1 at padding."""
        steps = torch.arange(0, max(int(lengths.max()), 1), self.stride, device=lengths.device)
        return torch.where(steps < lengths[:, None], steps, -1)

    def flops_per_frame(self) -> int:
        """FLOPs of ``frame_scores`` per frame skimmed (2 per multiply-add of the layers)."""
        linears = [m for m in self.layers if isinstance(m, nn.Linear)] + ([self.utility] if self.utility else [])
        return sum(2 * m.in_features * m.out_features for m in linears)

    def architecture(self) -> dict[str, Any]:
        return {
            "family": "Skim",
            "hidden": self.hidden,
            "rgb_dims": self.rgb_dims,
            "audio_dims": self.audio_dims,
            "input_dim": self.input_dim,
            "scoring": self.scoring,
            "stride": self.stride,
        }

    @classmethod
    def tiny(cls, **overrides: Any) -> SkimEncoder:
        """The same sizes: the skim is small already (16 features per frame)."""
        return cls(**overrides)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, rgb_dims={self.rgb_dims}, audio_dims={self.audio_dims}, scoring={self.scoring}, "
            f"stride={self.stride}"
        )


__all__ = ["SkimEncoder"]
