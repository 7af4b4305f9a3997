"""``vdistill score``: an exported model over a frame store or TFRecords, without Lightning (a plain jsonargparse
command over ``deployment/scoring.py``)."""

from __future__ import annotations

from lightning_distill.cli.summary import print_summary
from lightning_distill.deployment.scoring import score as score_videos
from lightning_distill.evaluation.tables import print_metrics, write_metrics_json


def score(
    *, model: str, data: str, predictions: str | None = None, metrics_json: str | None = None, batch_size: int = 256
) -> None:
    """Score videos with a model written by ``vdistill export``: Kaggle predictions and YouTube-8M metrics.

    Args:
        model: the exported model (.onnx, or a TorchScript file).
        data: a frame store (.h5) or TFRecord shards (a glob such as 'DIR/test*.tfrecord'; quote it).
        predictions: write the Kaggle prediction file (top 20 classes per video) here.
        metrics_json: write the metrics here as JSON (when the videos have labels).
        batch_size: videos per run of the model.
    """
    metrics = score_videos(model, data, predictions=predictions, batch_size=batch_size)
    rows = {"model": model, "data": data}
    if metrics:
        print_metrics({f"score/{k}": v for k, v in metrics.items()}, title="metrics")
        if metrics_json:
            rows["metrics"] = str(write_metrics_json(metrics, metrics_json))
    if predictions:
        rows["predictions"] = predictions
    print_summary("score", rows)
