"""Classifier heads: video representation (B, E) -> class probabilities (B, C), one sigmoid output per class.

Teacher and student share one head (paper section 4). Modules build it as ``head(encoder.output_dim,
num_classes)``, so every head takes ``(input_dim, num_classes, ...)`` in that order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from lightning_distill.models.layers import ContextGating

# Probabilities are clamped to [EPS, 1 - EPS]: a float32 sigmoid rounds to exactly 1 beyond a logit of ~17
# (and a mixture to 0 when its gate saturates), where binary cross-entropy would see log(0).
# 1 - float32 machine epsilon is the largest float32 below 1 that keeps a gap from it.
EPS = float(torch.finfo(torch.float32).eps)


class ClassifierHead(nn.Module, ABC):
    """Representation (B, E) -> class probabilities (B, C), strictly inside (0, 1), in float32.

    The class scores are independent (multi-label): they need not sum to one. The final nonlinearity runs
    in float32 even under bf16 autocast. Weight decay, if any, is the optimiser's job.

    Attributes:
        input_dim: E, size of the representation.
        num_classes: C.
    """

    input_dim: int
    num_classes: int

    @abstractmethod
    def forward(self, representation: Tensor) -> Tensor:
        """(B, E) -> (B, C) float32 probabilities in (0, 1)."""


class LogisticHead(ClassifierHead):
    """One logistic regression per class: sigmoid(x W + b) (the NeXtVLAD classifier).

    Args:
        input_dim: E, size of the representation.
        num_classes: C.
    """

    def __init__(self, input_dim: int, num_classes: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.linear = nn.Linear(input_dim, num_classes)

    def forward(self, representation: Tensor) -> Tensor:
        logits = self.linear(representation).float()
        with torch.autocast(logits.device.type, enabled=False):
            return torch.sigmoid(logits).clamp(EPS, 1 - EPS)


class MoEHead(ClassifierHead):
    """Mixture of logistic experts per class (YouTube-8M starter code; H-RNN and NetVLAD classifier).

    For class c: p_c = sum_m g_cm sigmoid(x w_cm + b_cm), with gates g_c = softmax over num_mixtures + 1
    logits x v_cm (no bias), the last belonging to a dummy expert that always predicts 0, so a class can
    gate itself off. With ``probability_gating``, Willow's context gating follows on the probabilities:
    p * sigmoid(BN(p U)) with U (C, C), so that classes that co-occur can raise each other.

    Weight layout: row c * (num_mixtures + 1) + m of ``gates`` and row c * num_mixtures + m of ``experts``
    belong to class c, mixture m.

    Args:
        input_dim: E, size of the representation.
        num_classes: C.
        num_mixtures: experts per class, not counting the dummy one.
        probability_gating: apply context gating to the class probabilities.
    """

    def __init__(
        self, input_dim: int, num_classes: int, num_mixtures: int = 2, probability_gating: bool = False
    ) -> None:
        super().__init__()
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.num_mixtures = num_mixtures
        self.gates = nn.Linear(input_dim, num_classes * (num_mixtures + 1), bias=False)
        self.experts = nn.Linear(input_dim, num_classes * num_mixtures)
        self.probability_gating = ContextGating(num_classes) if probability_gating else None

    def forward(self, representation: Tensor) -> Tensor:
        batch = representation.shape[0]
        gate_logits = self.gates(representation).float().reshape(batch, self.num_classes, self.num_mixtures + 1)
        expert_logits = self.experts(representation).float().reshape(batch, self.num_classes, self.num_mixtures)
        with torch.autocast(gate_logits.device.type, enabled=False):
            gates = torch.softmax(gate_logits, dim=-1)[..., : self.num_mixtures]
            probabilities = (gates * torch.sigmoid(expert_logits)).sum(-1)
            if self.probability_gating is not None:
                probabilities = self.probability_gating(probabilities)
            return probabilities.clamp(EPS, 1 - EPS)
