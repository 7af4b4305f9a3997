"""NeXtVLAD (Lin et al., ECCV 2018 workshop): NetVLAD on expanded, grouped frame features."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_distill.models.encoder import EncoderOutput, VideoEncoder
from lightning_distill.models.layers import MaskedBatchNorm, SEGating, check_rgb_split, vlad_aggregate


class NeXtVLADStream(nn.Module):
    """One modality's NeXtVLAD layer.

    Each frame is expanded x ``expansion`` by a fully connected layer and cut into G groups of
    expansion * D / G features. Every group of every frame is softly assigned to the K clusters
    (FC -> batch norm over real frames -> softmax over K) and weighted by a sigmoid attention of its group;
    the attention is multiplied by the frame mask, so padding (however many slots the view has: T is read from
    the input, never fixed at 300 as in the original) adds nothing. Residuals to K anchors are summed over
    frames and groups, intra-normalised per cluster and batch-normalised.

    Args:
        dim: D, features per frame of this modality.
        num_clusters: K.
        groups: G.
        expansion: lambda, the expansion factor.
    """

    def __init__(self, dim: int, num_clusters: int, groups: int, expansion: int) -> None:
        super().__init__()
        expanded = expansion * dim
        if groups < 1 or num_clusters < 1 or expanded % groups:
            raise ValueError(
                f"NeXtVLAD stream needs groups >= 1 dividing expansion * dim = {expanded} and clusters >= 1, "
                f"got groups={groups}, num_clusters={num_clusters}"
            )
        self.groups = groups
        self.num_clusters = num_clusters
        self.group_dim = expanded // groups
        self.expand = nn.Linear(dim, expanded)
        self.attention = nn.Linear(expanded, groups)
        # No bias: the batch norm right after supplies the shift.
        self.assign = nn.Linear(expanded, groups * num_clusters, bias=False)
        self.assign_norm = MaskedBatchNorm(groups * num_clusters)
        self.anchors = nn.Parameter(torch.randn(self.group_dim, num_clusters) / math.sqrt(self.group_dim))
        self.output_dim = num_clusters * self.group_dim
        self.vlad_norm = nn.BatchNorm1d(self.output_dim)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D), (B, T) bool -> VLAD (B, K * D / G * lambda), weighted assignments (B, T, G * K)."""
        batch, slots, _ = x.shape
        expanded = self.expand(x)
        attention = torch.sigmoid(self.attention(expanded)) * mask.unsqueeze(-1)
        logits = self.assign_norm(self.assign(expanded), mask).reshape(batch, slots, self.groups, self.num_clusters)
        weighted = torch.softmax(logits, dim=-1) * attention.unsqueeze(-1)
        vlad = vlad_aggregate(
            weighted.reshape(batch, slots * self.groups, self.num_clusters),
            expanded.reshape(batch, slots * self.groups, self.group_dim),
            self.anchors,
        )
        return self.vlad_norm(vlad.flatten(1)), weighted.flatten(2)


class NeXtVLAD(VideoEncoder):
    """NeXtVLAD video model of linrongc/youtube-8m, best single model of the 2nd YouTube-8M challenge.

    An rgb stream (K clusters, G groups) and an audio stream (K / 2 clusters, G / 2 groups) of
    ``NeXtVLADStream``; their concatenation -> dropout -> fully connected to ``hidden_size`` (no bias) ->
    batch norm -> squeeze-and-excitation gating with bottleneck hidden_size / ``gating_reduction``.
    About 81M parameters at the defaults (89M with the 3862-class logistic head, as published).

    Representation: the gated vector, (B, hidden_size).
    Intermediate: each frame's group-attention-weighted soft assignments, rgb (G x K) then audio
    (G/2 x K/2), (B, T, G K + G K / 4), zero at padding: exactly what each frame contributes to the
    aggregation (the per-frame state of a bag-of-frames model, as for ``NetVLAD``), and far smaller than the
    expanded features.

    Args:
        input_dim: D, features per frame (rgb then audio).
        rgb_dim: leading features of a frame that are rgb; the remaining ``input_dim - rgb_dim`` are audio.
        num_clusters: K, rgb clusters (audio: K // 2).
        groups: G, rgb groups (audio: G // 2).
        expansion: lambda, frame feature expansion factor.
        hidden_size: size of the hidden layer, the representation.
        dropout: dropout on the concatenated VLAD vectors.
        gating_reduction: bottleneck factor of the SE gating.
    """

    key = "nextvlad"

    def __init__(
        self,
        input_dim: int = 1152,
        rgb_dim: int = 1024,
        num_clusters: int = 128,
        groups: int = 8,
        expansion: int = 2,
        hidden_size: int = 2048,
        dropout: float = 0.5,
        gating_reduction: int = 8,
    ) -> None:
        super().__init__()
        check_rgb_split(rgb_dim, input_dim)
        self.input_dim = input_dim
        self.rgb_dim = rgb_dim
        self.num_clusters = num_clusters
        self.groups = groups
        self.expansion = expansion
        self.hidden_size = hidden_size
        self.gating_reduction = gating_reduction
        self.output_dim = hidden_size
        self.rgb = NeXtVLADStream(rgb_dim, num_clusters, groups, expansion)
        self.audio = NeXtVLADStream(input_dim - rgb_dim, num_clusters // 2, groups // 2, expansion)
        self.dropout = nn.Dropout(dropout)
        # No bias: the batch norm right after supplies the shift.
        self.hidden = nn.Linear(self.rgb.output_dim + self.audio.output_dim, hidden_size, bias=False)
        self.hidden_norm = nn.BatchNorm1d(hidden_size)
        self.gate = SEGating(hidden_size, gating_reduction)

    @classmethod
    def tiny(cls, **overrides: Any) -> NeXtVLAD:
        """4 rgb clusters in 2 groups (audio: 2 clusters, 1 group), 32 hidden units."""
        return cls(**{"num_clusters": 4, "groups": 2, "hidden_size": 32, "gating_reduction": 4, **overrides})

    def architecture(self) -> dict[str, Any]:
        return {
            "family": "NeXtVLAD",
            "input_dim": self.input_dim,
            "rgb_dim": self.rgb_dim,
            "num_clusters": self.num_clusters,
            "groups": self.groups,
            "expansion": self.expansion,
            "hidden_size": self.hidden_size,
            "gating_reduction": self.gating_reduction,
        }

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        """(B, T, D) frames, (B, T) bool mask -> representation (B, hidden_size), intermediate (B, T, H)."""
        rgb_vlad, rgb_weighted = self.rgb(frames[..., : self.rgb_dim], mask)
        audio_vlad, audio_weighted = self.audio(frames[..., self.rgb_dim :], mask)
        vlad = self.dropout(torch.cat([rgb_vlad, audio_vlad], dim=1))
        return EncoderOutput(
            representation=self.gate(self.hidden_norm(self.hidden(vlad))),
            intermediate=torch.cat([rgb_weighted, audio_weighted], dim=-1),
        )
