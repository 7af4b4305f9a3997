"""YT8MMetrics against hand-worked cases and an independent full-matrix numpy implementation of the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.utilities import dim_zero_cat

from lightning_distill.errors import ConfigError
from lightning_distill.evaluation.ranking import stable_topk
from lightning_distill.evaluation.metrics import YT8MMetrics

KEYS = ("gap", "map", "map_all_classes", "hit_at_one", "perr")


def reference_metrics(probs: np.ndarray, labels: np.ndarray, top_k: int) -> dict[str, float]:
    """The YouTube-8M definitions on full (videos, classes) matrices, written straight from NOTES.md.

    Ties: a stable sort of -score over the row-major (video, class) matrix, the rule YT8MMetrics documents.
    """
    num_videos, num_classes = probs.shape
    ranking = np.argsort(-probs, axis=1, kind="stable")
    kept = np.zeros_like(labels, dtype=bool)
    kept[np.arange(num_videos)[:, None], ranking[:, :top_k]] = True
    # Boolean indexing walks row-major: video order, then class order, the documented tie order.
    scores, truth = probs[kept], labels[kept] > 0
    classes = np.broadcast_to(np.arange(num_classes), probs.shape)[kept]
    order = np.argsort(-scores, kind="stable")

    def average_precision(ranked_truth: np.ndarray, num_true: float) -> float:
        total, hits = 0.0, 0
        for position, is_true in enumerate(ranked_truth, start=1):
            if is_true:
                hits += 1
                total += hits / position
        return total / num_true if num_true > 0 else 0.0

    gap = average_precision(truth[order], labels.sum())
    ranked_truth, ranked_classes = truth[order], classes[order]
    aps = np.array(
        [average_precision(ranked_truth[ranked_classes == c], labels[:, c].sum()) for c in range(num_classes)]
    )
    has_labels = labels.sum(axis=0) > 0
    hit_at_one = labels[np.arange(num_videos), np.argmax(probs, axis=1)].mean()
    perr = []
    for row in range(num_videos):
        n = int(labels[row].sum())
        top = ranking[row, :n]
        perr.append(((labels[row, top] > 0) & (probs[row, top] > 0)).sum() / n if n else 0.0)
    return {
        "gap": gap,
        "map": aps[has_labels].mean() if has_labels.any() else 0.0,
        "map_all_classes": aps.mean(),
        "hit_at_one": hit_at_one,
        "perr": float(np.mean(perr)),
    }


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    assert set(result) == set(KEYS) and all(v.ndim == 0 for v in result.values())
    return {k: float(v) for k, v in result.items()}


def random_batches(seed: int, num_videos: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a 0.05 grid (many ties, some exact zeros), ~3 labels per video, some videos with none or many,
    the last classes never labelled and the first ones scored low so they are rarely predicted."""
    rng = np.random.default_rng(seed)
    probs = (np.round(rng.random((num_videos, num_classes)) * 20) / 20).astype(np.float32)
    probs[:, :3] *= 0.1
    labels = (rng.random((num_videos, num_classes)) < 3 / num_classes).astype(np.float32)
    labels[:, -4:] = 0
    labels[::7] = 0
    labels[3, : num_classes - 4] = 1
    return probs, labels


def test_hand_worked_three_videos_four_classes():
    probs = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.0], [0.6, 0.4, 0.0, 0.05]])
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    metric = YT8MMetrics(num_classes=4, top_k=2)
    metric.update(probs, labels)
    # Top-2 per video: v1 (0.9 c0 +) (0.5 c2 -); v2 (0.8 c1 -) (0.7 c2 +); v3 (0.6 c0 -) (0.4 c1 -).
    # Pooled: 0.9+ 0.8- 0.7+ 0.6- 0.5- 0.4-; 3 true labels (v1 c3 never reached a top-2).
    # GAP = (1/1 + 2/3) / 3 = 5/9.
    # Per class: c0 [0.9+ 0.6-] AP 1/1; c1 [0.8- 0.4-] no labels, 0; c2 [0.7+ 0.5-] AP 1; c3 no pairs, 1 label, 0.
    # map over c0, c2, c3 = 2/3; map_all_classes = 2/4.
    # Hit@1: v1 c0 true, v2 c1 false, v3 c0 false -> 1/3.
    # PERR: v1 n=2 top c0,c2 -> 1/2; v2 n=1 top c1 -> 0; v3 no labels -> 0; mean 1/6.
    expected = {"gap": 5 / 9, "map": 2 / 3, "map_all_classes": 0.5, "hit_at_one": 1 / 3, "perr": 1 / 6}
    assert as_floats(metric.compute()) == pytest.approx(expected, abs=1e-12)


def test_hand_worked_perr_beyond_top_k_and_zero_scores():
    probs = torch.tensor([[0.9, 0.0, 0.8, 0.1], [0.9, 0.0, 0.8, 0.1]])
    labels = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]])
    metric = YT8MMetrics(num_classes=4, top_k=2)
    metric.update(probs, labels)
    # v1 n=3 > top_k: top-3 c0 + c2 - c3 + -> 2/3. v2 n=4: all classes, but c1 scores 0 so it does not count -> 3/4.
    assert float(metric.compute()["perr"]) == pytest.approx((2 / 3 + 3 / 4) / 2, abs=1e-12)


def test_hand_worked_ties_follow_video_then_class_order():
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.2]])
    labels = torch.tensor([[0, 1], [1, 0]])
    metric = YT8MMetrics(num_classes=2, top_k=2)
    metric.update(probs, labels)
    result = as_floats(metric.compute())
    # Pooled in tie order: v1c0 -, v1c1 +, v2c0 +, v2c1 -. GAP = (1/2 + 2/3) / 2 = 7/12.
    # Hit@1: v1's first place among its tie is c0 (false), v2 c0 (true) -> 1/2.
    # Class c0 [v1 0.5 -, v2 0.5 +] AP = 1/2; class c1 [v1 0.5 +, v2 0.2 -] AP = 1. mAP = 3/4.
    assert result == pytest.approx(
        {"gap": 7 / 12, "map": 0.75, "map_all_classes": 0.75, "hit_at_one": 0.5, "perr": 0.5}, abs=1e-12
    )


@pytest.mark.parametrize(("num_classes", "top_k", "batch_size"), [(30, 5, 16), (12, 20, 7), (50, 3, 64)])
def test_matches_full_matrix_reference_over_batches(num_classes, top_k, batch_size):
    probs, labels = random_batches(seed=num_classes, num_videos=200, num_classes=num_classes)
    metric = YT8MMetrics(num_classes=num_classes, top_k=top_k)
    for start in range(0, len(probs), batch_size):
        batch = slice(start, start + batch_size)
        metric.update(torch.from_numpy(probs[batch]), torch.from_numpy(labels[batch]))
    expected = reference_metrics(probs, labels, min(top_k, num_classes))
    assert as_floats(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_continuous_scores_on_yt8m_size_match_reference():
    rng = np.random.default_rng(0)
    probs = rng.random((300, 3862), dtype=np.float32) ** 4
    labels = (rng.random((300, 3862)) < 3 / 3862).astype(np.float32)
    metric = YT8MMetrics(num_classes=3862)
    metric.update(torch.from_numpy(probs), torch.from_numpy(labels))
    assert as_floats(metric.compute()) == pytest.approx(reference_metrics(probs, labels, 20), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # the gathered copy gets states, not updates
def test_two_ranks_merged_equal_one_metric_over_all_videos():
    _, labels = random_batches(seed=5, num_videos=150, num_classes=40)
    # Distinct scores: merging may put rank 1's videos first, which changes only the order of ties.
    probs = (np.random.default_rng(1).permutation(150 * 40).reshape(150, 40) / 6000).astype(np.float32)
    whole, rank0, rank1 = (YT8MMetrics(num_classes=40) for _ in range(3))
    whole.update(torch.from_numpy(probs), torch.from_numpy(labels))
    rank0.update(torch.from_numpy(probs[:90]), torch.from_numpy(labels[:90]))
    rank1.update(torch.from_numpy(probs[90:]), torch.from_numpy(labels[90:]))
    expected = as_floats(whole.compute())

    merged = YT8MMetrics(num_classes=40)
    merged.merge_state(rank0)
    merged.merge_state(rank1)
    assert as_floats(merged.compute()) == pytest.approx(expected, abs=1e-12)

    # What the DDP "cat"/"sum" reducers do, including the 1-D float32 tensor torchmetrics pads an empty rank with.
    gathered = YT8MMetrics(num_classes=40)
    for name, reduce in gathered._reductions.items():
        states = [getattr(rank, name) for rank in (rank0, rank1)]
        if reduce is dim_zero_cat:
            setattr(gathered, name, dim_zero_cat([dim_zero_cat(s) for s in states] + [torch.tensor([])]))
        else:
            setattr(gathered, name, sum(states))
    assert as_floats(gathered.compute()) == pytest.approx(expected, abs=1e-12)


def test_state_is_nine_bytes_per_kept_prediction_and_no_class_matrix():
    metric = YT8MMetrics(num_classes=3862, top_k=20)
    metric.update(torch.rand(64, 3862), (torch.rand(64, 3862) < 0.001).float())
    per_video = sum(dim_zero_cat(getattr(metric, n)).nbytes for n in ("topk_scores", "topk_classes", "topk_is_label"))
    # float32 score, int32 class (collectives have no int16), bool hit.
    assert per_video / 64 == 20 * (4 + 4 + 1)


def test_reset_forgets_videos():
    metric = YT8MMetrics(num_classes=4, top_k=2)
    metric.update(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), torch.tensor([[1, 0, 0, 0]]))
    metric.reset()
    metric.update(torch.tensor([[0.9, 0.1, 0.0, 0.0]]), torch.tensor([[1, 0, 0, 0]]))
    assert as_floats(metric.compute())["gap"] == 1.0


def test_wrong_class_count_is_a_config_error():
    with pytest.raises(ConfigError, match="num_classes=5"):
        YT8MMetrics(num_classes=5).update(torch.rand(2, 4), torch.zeros(2, 4))


def test_stable_topk_breaks_ties_by_class_even_across_the_cut():
    scores = torch.tensor([[0.1, 0.7, 0.7, 0.3, 0.7], [0.2, 0.2, 0.2, 0.2, 0.9]])
    values, indices = stable_topk(scores, 2)
    assert indices.tolist() == [[1, 2], [4, 0]]
    assert torch.equal(values, scores.gather(1, indices))
    # A tie inside the kept set only: the set is right, its order goes by class.
    values, indices = stable_topk(torch.tensor([[0.7, 0.9, 0.7, 0.1, 0.0]]), 3)
    assert indices.tolist() == [[1, 0, 2]] and values[0].tolist() == pytest.approx([0.9, 0.7, 0.7])
