"""NetVLAD with context gating (Miech et al., Willow's YouTube-8M 2017 model): a bag of frames, clustered."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.models.encoder import EncoderOutput, VideoEncoder
from lightning_distill.models.layers import ContextGating, MaskedBatchNorm, check_rgb_split, vlad_aggregate


class VLADStream(nn.Module):
    """One modality's NetVLAD layer: soft assignment, residuals to learned anchors, intra-normalisation.

    a = softmax_K(BN(x W)), W without bias (the batch norm supplies the shift); padded frames get zero
    assignment and stay out of the batch statistics.

    Args:
        dim: D, features per frame of this modality.
        num_clusters: K.
    """

    def __init__(self, dim: int, num_clusters: int) -> None:
        super().__init__()
        self.assign = nn.Linear(dim, num_clusters, bias=False)
        self.assign_norm = MaskedBatchNorm(num_clusters)
        self.anchors = nn.Parameter(torch.randn(dim, num_clusters) / math.sqrt(dim))
        self.output_dim = dim * num_clusters

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D), (B, T) bool -> VLAD (B, K * D) (not globally normalised), assignments (B, T, K)."""
        logits = self.assign_norm(self.assign(x), mask)
        assignments = torch.softmax(logits, dim=-1) * mask.unsqueeze(-1)
        return vlad_aggregate(assignments, x, self.anchors).flatten(1), assignments


class NetVLAD(VideoEncoder):
    """NetVLAD + context gating, Willow's best YouTube-8M configuration (paper section 3.2).

    Frames are batch-normalised (real frames only), split into an rgb and an audio stream, each aggregated
    by a ``VLADStream`` (K and K_audio clusters) and globally L2-normalised; the concatenation goes through a
    fully connected layer to ``hidden_size`` and context gating. The hidden layer is linear with a bias and
    no batch norm or relu6: Willow's submitted run set ``netvlad_relu=False``, which drops both; the gating's
    own batch norm follows.

    Representation: the gated vector, (B, hidden_size).
    Intermediate: each frame's soft assignment over the clusters, rgb then audio, (B, T, K + K_audio), zero
    at padding. A bag-of-frames model has no state that carries context from frame to frame; the
    assignment is the per-frame quantity it learns (the VLAD is the assignment-weighted residual sum), and it
    is small next to the K x D residuals, so L_rep^I asks the student to cluster its frames as the teacher does.

    Args:
        input_dim: D, features per frame (rgb then audio).
        rgb_dim: leading features of a frame that are rgb; the remaining ``input_dim - rgb_dim`` are audio.
        num_clusters: K, rgb clusters.
        audio_clusters: audio clusters; None means num_clusters // 2 (Willow's choice).
        hidden_size: size of the hidden layer, the representation.
        gating: apply context gating to the hidden layer.
    """

    key = "netvlad"

    def __init__(
        self,
        input_dim: int = 1152,
        rgb_dim: int = 1024,
        num_clusters: int = 256,
        audio_clusters: int | None = None,
        hidden_size: int = 1024,
        gating: bool = True,
    ) -> None:
        super().__init__()
        check_rgb_split(rgb_dim, input_dim)
        self.input_dim = input_dim
        self.rgb_dim = rgb_dim
        self.num_clusters = num_clusters
        self.audio_clusters = num_clusters // 2 if audio_clusters is None else audio_clusters
        self.hidden_size = hidden_size
        self.gating = gating
        self.output_dim = hidden_size
        self.input_norm = MaskedBatchNorm(input_dim)
        self.rgb = VLADStream(rgb_dim, num_clusters)
        self.audio = VLADStream(input_dim - rgb_dim, self.audio_clusters)
        self.hidden = nn.Linear(self.rgb.output_dim + self.audio.output_dim, hidden_size)
        self.gate = ContextGating(hidden_size) if gating else nn.Identity()

    @classmethod
    def tiny(cls, **overrides: Any) -> NetVLAD:
        """4 rgb and 2 audio clusters, 32 hidden units."""
        return cls(**{"num_clusters": 4, "hidden_size": 32, **overrides})

    def architecture(self) -> dict[str, Any]:
        return {
            "family": "NetVLAD",
            "input_dim": self.input_dim,
            "rgb_dim": self.rgb_dim,
            "num_clusters": self.num_clusters,
            "audio_clusters": self.audio_clusters,
            "hidden_size": self.hidden_size,
            "gating": self.gating,
        }

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        """(B, T, D) frames, (B, T) bool mask -> representation (B, hidden_size), intermediate (B, T, K + K_a)."""
        x = self.input_norm(frames, mask)
        rgb_vlad, rgb_assign = self.rgb(x[..., : self.rgb_dim], mask)
        audio_vlad, audio_assign = self.audio(x[..., self.rgb_dim :], mask)
        vlad = torch.cat([F.normalize(rgb_vlad, dim=1), F.normalize(audio_vlad, dim=1)], dim=1)
        return EncoderOutput(
            representation=self.gate(self.hidden(vlad)),
            intermediate=torch.cat([rgb_assign, audio_assign], dim=-1),
        )
