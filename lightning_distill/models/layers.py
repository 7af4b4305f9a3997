"""Building blocks shared by several encoders and heads: masked batch norm, VLAD aggregation, gating.

Tensor dims: B videos, T frame slots, N = rows aggregated per video (T, or T x G for NeXtVLAD groups),
K clusters, D features, F normalised features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_rgb_split(rgb_dim: int, input_dim: int) -> None:
    """The VLAD encoders cluster rgb and audio apart: frames must hold both, rgb first."""
    if not 0 < rgb_dim < input_dim:
        raise ValueError(f"rgb_dim must lie strictly between 0 and input_dim={input_dim}, got {rgb_dim}")


class MaskedBatchNorm(nn.Module):
    """Batch norm over the feature (last) dim whose batch statistics count only real frames.

    A plain ``BatchNorm1d`` over frames would average padding into its mean and variance, so the same video
    would come out differently depending on how much padding its batch has (and the running statistics would
    drift towards zero). Here only slots with ``mask`` True enter the statistics; the statistics are computed
    in float32 without a host sync (no boolean indexing), so it runs under bf16 autocast and on GPU alike.
    Padded slots come out as exact zeros. Parameters and buffers are named as in ``nn.BatchNorm1d``.

    Args:
        num_features: F, size of the last dim.
        eps: added to the variance for stability.
        momentum: weight of the current batch in the running statistics (PyTorch convention).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(..., F) features, (...) bool mask -> (..., F) float32, zero where mask is False."""
        x = x.float()
        weights = mask.unsqueeze(-1).float()
        if self.training:
            rows = tuple(range(x.dim() - 1))
            count = weights.sum().clamp(min=1.0)
            mean = (x * weights).sum(rows) / count
            var = ((x - mean).square() * weights).sum(rows) / count
            with torch.no_grad():
                # Running variance is unbiased, as nn.BatchNorm1d keeps it.
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        normalised = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return normalised * weights


def vlad_aggregate(assignments: Tensor, features: Tensor, anchors: Tensor) -> Tensor:
    """Sum of assignment-weighted residuals to learned anchors, intra-normalised per cluster.

    vlad_k = sum_n a_nk (x_n - c_k) = (A^T X)_k - (sum_n a_nk) c_k, so no (N, K, D) residual tensor is built.
    Rows with zero assignment (padding) contribute nothing.

    Args:
        assignments: (B, N, K) soft assignments, zero at padded rows.
        features: (B, N, D) descriptors.
        anchors: (D, K) cluster anchors c_k.

    Returns:
        (B, K, D), each cluster's residual sum L2-normalised (NetVLAD's intra-normalisation).
    """
    weighted = assignments.transpose(1, 2) @ features
    mass = assignments.sum(1).unsqueeze(-1)
    return F.normalize(weighted - mass * anchors.t(), dim=-1)


class ContextGating(nn.Module):
    """y = x * sigmoid(BN(x W)) (Miech et al., Willow): each unit re-weighted by the others.

    Used on the NetVLAD video vector and, in ``MoEHead``, on the class probabilities.

    Args:
        dim: size of x.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # No bias: the batch norm right after supplies the shift.
        self.linear = nn.Linear(dim, dim, bias=False)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim)."""
        return x * torch.sigmoid(self.norm(self.linear(x)))


class SEGating(nn.Module):
    """Squeeze-and-excitation gating y = x * sigmoid(W2 relu(BN(x W1))) with a bottleneck (NeXtVLAD).

    Args:
        dim: size of x.
        reduction: bottleneck factor, the bottleneck has dim // reduction units.
    """

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        bottleneck = max(dim // reduction, 1)
        self.squeeze = nn.Linear(dim, bottleneck, bias=False)
        self.norm = nn.BatchNorm1d(bottleneck)
        self.excite = nn.Linear(bottleneck, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim)."""
        return x * torch.sigmoid(self.excite(torch.relu(self.norm(self.squeeze(x)))))
