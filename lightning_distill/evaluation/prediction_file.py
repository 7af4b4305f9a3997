"""Kaggle prediction files (YouTube-8M 2017/2018): each video's top-20 classes, one row per video.

Format: header ``VideoId,LabelConfidencePairs``, then one row per video ``<id>,<label> <score> <label> <score> ...``
with the top-k classes by descending score (equal scores by class index, as the metrics rank them), scores
with 6 decimals. Needs torch only (``vdistill score`` writes these files without Lightning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from torch import Tensor

from lightning_distill.atomic_files import replacing
from lightning_distill.errors import DataError
from lightning_distill.evaluation.ranking import stable_topk

HEADER = "VideoId,LabelConfidencePairs"


def format_prediction_row(video_id: str, probs: Tensor, top_k: int = 20) -> str:
    """One row of a Kaggle prediction file, without the newline.

    Args:
        video_id: the video's id as in its record.
        probs: (C,) class scores.
        top_k: classes listed (all C if fewer).

    Returns:
        ``"<id>,<label> <score> ..."``, labels as class indices, scores as ``%.6f``, best first.
    """
    if "," in video_id or "\n" in video_id:
        raise DataError(f"video id {video_id!r} contains a comma or newline and cannot go in a CSV prediction file")
    scores, labels = stable_topk(probs.detach().float().cpu()[None], min(top_k, probs.shape[-1]))
    pairs = " ".join(f"{label} {score:.6f}" for label, score in zip(labels[0].tolist(), scores[0].tolist()))
    return f"{video_id},{pairs}"


@contextmanager
def prediction_file(path: str | Path, top_k: int = 20) -> Iterator[Callable[[Sequence[str], Tensor], None]]:
    """Write a prediction file atomically: yields ``write(video_ids, probabilities (B, C))``, called per batch; the
    file appears under ``path`` complete, once the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, durable=False) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(HEADER + "\n")
        yield lambda ids, probabilities: write_rows(out, ids, probabilities, top_k)


def write_rows(out: IO[str], ids: Sequence[str], probabilities: Tensor, top_k: int = 20) -> None:
    """Append one row per video (``ids`` and their (B, C) ``probabilities``) to an open prediction file."""
    probabilities = probabilities.detach().float().cpu()
    out.writelines(format_prediction_row(v, p, top_k) + "\n" for v, p in zip(ids, probabilities))
