"""YouTube-8M's evaluation metrics (GAP@20, mAP, Hit@1, PERR) as one memory-bounded torchmetrics ``Metric``.

Definitions follow google/youtube-8m's ``eval_util.py`` and ``average_precision_calculator.py`` (the code the
paper's numbers come from); see also shared/paper/NOTES.md, section "Metrics".
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_distill.errors import ConfigError, VDistillError
from lightning_distill.evaluation.ranking import stable_topk


class YT8MMetrics(Metric):
    """GAP@k, mAP, Hit@1 and PERR over all videos seen, keeping only each video's top-k predictions.

    Definitions (those of the YouTube-8M evaluation code):

    - ``gap``: each video's top-k (score, class) pairs are pooled over all videos and sorted by descending score;
      GAP = sum over positions i that hold a true label of (true labels up to i) / i, divided by the number of
      all true (video, class) labels, including those that never reached a top-k.
    - ``map``: the same average precision per class, over the pairs of that class that reached some top-k,
      divided by all true labels of the class; averaged over the classes with at least one true label (the
      current starter code).
    - ``map_all_classes``: the same, averaged over all classes, a class without true labels counting 0 (the
      2017/2018 code the paper used: its mAP 0.414 next to GAP 0.811).
    - ``hit_at_one``: fraction of videos whose highest-scoring class is a true label.
    - ``perr``: per video with n true labels, the fraction of its n highest-scoring classes that are true labels
      with a score > 0; a video without labels counts 0. Averaged over all videos.

    Ties: equal scores rank by order of arrival, i.e. by video in ``update`` order, then by class index within a
    video (``numpy.argsort(-scores, kind="stable")`` over the row-major (video, class) matrix). The reference code
    breaks ties arbitrarily; any rule gives the same value when scores are distinct. Under DDP the order of
    arrival is rank 0's videos, then rank 1's, and so on.

    State: per video its top-k scores (float32), classes (int32: neither gloo nor NCCL gathers int16, so DDP's
    metric sync failed with it) and whether each is a true label (bool), 9·k bytes (180 B for k = 20), plus
    per-class true-label counts and three sums. Never
    a (videos, classes) matrix, so YouTube-8M's 1.4M validation videos take ~200 MB. Lists are concatenated and
    counts summed across DDP ranks.

    Args:
        num_classes: C, classes per prediction (3862 for YouTube-8M 2018, 4716 for 2017).
        top_k: predictions kept per video for GAP and mAP (20 in YouTube-8M).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, top_k: int = 20) -> None:
        super().__init__()
        if num_classes < 1 or top_k < 1:
            raise ConfigError(f"YT8MMetrics needs num_classes >= 1 and top_k >= 1, got {num_classes} and {top_k}")
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        # Flat 1-D lists (video-major, k entries per video): torchmetrics' DDP sync pads an empty rank with a 1-D
        # tensor, which only concatenates with 1-D states.
        self.add_state("topk_scores", default=[], dist_reduce_fx="cat")
        self.add_state("topk_classes", default=[], dist_reduce_fx="cat")
        self.add_state("topk_is_label", default=[], dist_reduce_fx="cat")
        self.add_state("labels_per_class", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hit_at_one_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("perr_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add a batch of videos.

        Args:
            probs: (B, C) float scores (probabilities; any real scores rank the same way).
            labels: (B, C) multi-hot ground truth in {0, 1} (any dtype); all zero for an unlabelled video.
        """
        if probs.ndim != 2 or probs.shape != labels.shape or probs.shape[1] != self.num_classes:
            raise ConfigError(
                f"YT8MMetrics(num_classes={self.num_classes}) got probs {tuple(probs.shape)} and labels "
                f"{tuple(labels.shape)}: both must be (batch, {self.num_classes}); check the data's class count"
            )
        if probs.shape[0] == 0:
            return
        probs = probs.detach().float()
        # Sums of float labels, not counts of `labels > 0`: the reference sums label values (the same for
        # multi-hot), and a bool reduction over (B, C) costs more than the top-k itself.
        labels = labels.detach().float()
        labels_per_video = labels.sum(dim=1).long()
        # One ranking serves all metrics: GAP/mAP need the top-k, PERR each video's top-n (n = its label count,
        # which may exceed k, so it must be taken here from the full row), Hit@1 the first place.
        depth = min(max(self.top_k, int(labels_per_video.max())), self.num_classes)
        values, classes = stable_topk(probs, depth)
        ranked_is_label = labels.gather(1, classes) > 0

        self.topk_scores.append(values[:, : self.top_k].flatten())
        self.topk_classes.append(classes[:, : self.top_k].flatten().to(torch.int32))
        self.topk_is_label.append(ranked_is_label[:, : self.top_k].flatten())
        self.labels_per_class += labels.sum(dim=0).long()

        self.hit_at_one_sum += ranked_is_label[:, 0].sum()
        within_n = torch.arange(depth, device=probs.device) < labels_per_video[:, None]
        hits_within_n = (ranked_is_label & within_n & (values > 0)).sum(dim=1)
        self.perr_sum += (hits_within_n.double() / labels_per_video.clamp(min=1)).sum()
        self.num_videos += probs.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Metrics over every video seen: 0-dim float64 tensors under ``gap``, ``map``, ``map_all_classes``,
        ``hit_at_one`` and ``perr``."""
        if int(self.num_videos) == 0:
            raise VDistillError("YT8MMetrics.compute() before any update(): evaluate at least one batch first")
        scores = dim_zero_cat(self.topk_scores).float()
        # Casts undo the dtype promotion that DDP's empty-rank padding may cause.
        classes = dim_zero_cat(self.topk_classes).long()
        is_label = dim_zero_cat(self.topk_is_label).bool()
        labels_per_class = self.labels_per_class.double()

        order = scores.sort(descending=True, stable=True).indices
        ranked_is_label, ranked_classes = is_label[order], classes[order]
        pooled = torch.zeros_like(ranked_classes)
        gap = _precision_sums(ranked_is_label, pooled, 1)[0] / labels_per_class.sum().clamp(min=1)

        # Stable by class keeps each class's pairs in the global score order: one segment per class.
        by_class = ranked_classes.sort(stable=True).indices
        ap_sums = _precision_sums(ranked_is_label[by_class], ranked_classes[by_class], self.num_classes)
        # A class without true labels has no hits, so its sum, and AP, is 0.
        aps = ap_sums / labels_per_class.clamp(min=1)
        has_labels = labels_per_class > 0
        num_videos = self.num_videos.double()
        return {
            "gap": gap,
            "map": aps[has_labels].mean() if has_labels.any() else aps.new_zeros(()),
            "map_all_classes": aps.mean(),
            "hit_at_one": self.hit_at_one_sum / num_videos,
            "perr": self.perr_sum / num_videos,
        }


def _precision_sums(ranked_is_label: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Per segment, the sum over its ranks i holding a true label of precision@i: (N,), (N,) -> (num_segments,).

    Each segment (a class, or one segment for GAP's pooled list) is a contiguous run of pairs already in rank
    order; ranks and running hit counts restart at each segment's start, found from the segment sizes.
    """
    hits = ranked_is_label.double()
    sizes = torch.bincount(segments, minlength=num_segments)
    segment_start = (sizes.cumsum(0) - sizes)[segments]
    position = torch.arange(hits.numel(), device=hits.device)
    running_hits = hits.cumsum(0)
    hits_so_far = running_hits - (running_hits - hits)[segment_start]
    precision = hits_so_far / (position - segment_start + 1)
    sums = torch.zeros(num_segments, dtype=torch.float64, device=hits.device)
    return sums.index_add_(0, segments, hits * precision)
