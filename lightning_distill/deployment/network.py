"""The network a trained module predicts with, as one ``nn.Module`` from raw YouTube-8M frames to probabilities.

Inputs are what YouTube-8M records hold for the frames a model reads: ``rgb`` (B, T, 1024) and ``audio``
(B, T, 128) uint8. The graph dequantises them as the starter code does, applies the module's normalisation,
encodes and classifies: ``probabilities`` (B, C). Every slot is a real frame (a k-frame sampler always fills its
k slots; a teacher's T is fixed at export), so the encoders run their mask-free path (``forward_all_frames``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_distill.data.normalization import FeatureNormalizer, dequantize_frames
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.models.heads import ClassifierHead


class RawFramesClassifier(nn.Module):
    """``rgb`` (B, T, 1024) uint8, ``audio`` (B, T, 128) uint8 -> ``probabilities`` (B, C) float32.

    Args:
        encoder: the trained encoder (eval mode is set here).
        head: its classifier head.
        normalization: the normalisation the model was trained with.
    """

    def __init__(self, encoder: VideoEncoder, head: ClassifierHead, normalization: FeatureNormalizer) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.head = head.eval()
        self.normalization = normalization

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        frames = dequantize_frames(torch.cat([rgb, audio], dim=-1))
        mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return self.head(self.encoder.forward_all_frames(self.normalization(frames, mask)))
