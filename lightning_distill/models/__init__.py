"""Encoders (frames -> video representation) and classifier heads (representation -> class probabilities)."""

from lightning_distill.models.encoder import EncoderOutput, VideoEncoder
from lightning_distill.models.heads import ClassifierHead, LogisticHead, MoEHead
from lightning_distill.models.hrnn import HRNN
from lightning_distill.models.netvlad import NetVLAD
from lightning_distill.models.nextvlad import NeXtVLAD

__all__ = [
    "HRNN",
    "ClassifierHead",
    "EncoderOutput",
    "LogisticHead",
    "MoEHead",
    "NeXtVLAD",
    "NetVLAD",
    "VideoEncoder",
]
