"""Deterministic top-k: the one ranking rule the metrics and the prediction file share.

``torch.topk`` leaves the order of equal scores unspecified, and YouTube-8M's reference code (``argpartition``
and a shuffled sort) breaks ties arbitrarily too. We fix one rule so results are reproducible and testable:
higher score first, and among equal scores the lower class index first, which is what a stable sort of
``-scores`` (``numpy.argsort(-scores, kind="stable")``) gives.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best entries of each row, by descending score, equal scores by ascending class index.

    Args:
        scores: (B, C) float scores.
        k: entries kept per row; at most C.

    Returns:
        (values, indices), both (B, k): the first k entries of each row's stable descending sort.
    """
    num_classes = scores.shape[1]
    # One extra entry tells whether a tie straddles the k-th place, in which case topk's choice of which tied
    # classes to keep is arbitrary and only a full stable sort of that row decides correctly.
    probe = min(k + 1, num_classes)
    top_values, top_indices = torch.topk(scores, probe, dim=1, sorted=True)
    values, indices = top_values[:, :k].clone(), top_indices[:, :k].clone()
    # Repairs touch only rows with equal neighbours, rare for real-valued scores, so the common case costs one topk.
    equal_next = top_values[:, 1:] == top_values[:, :-1]
    tied_inside = equal_next[:, : k - 1].any(dim=1).nonzero().flatten()
    if tied_inside.numel():
        # The kept set is right; put its equal scores in class order: sort by class, then stably by score.
        by_class = indices[tied_inside].sort(dim=1).values
        order = scores[tied_inside].gather(1, by_class).sort(dim=1, descending=True, stable=True).indices
        indices[tied_inside] = by_class.gather(1, order)
        values[tied_inside] = scores[tied_inside].gather(1, indices[tied_inside])
    if probe > k:
        straddling = equal_next[:, k - 1].nonzero().flatten()
        if straddling.numel():
            full_values, full_indices = scores[straddling].sort(dim=1, descending=True, stable=True)
            values[straddling], indices[straddling] = full_values[:, :k], full_indices[:, :k]
    return values, indices
