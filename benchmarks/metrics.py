"""Cost of YT8MMetrics against torchmetrics' MultilabelAveragePrecision at YouTube-8M scale, on one core.

Feeds random probabilities with ~3 true labels per video in batches (data generation is not timed) and reports
update throughput, compute time and state bytes per video, as a markdown table. torchmetrics keeps every
(B, C) prediction and target, about 3862 * (4 + 8) bytes a video, 9 GB for 200k videos, so it runs on
``--reference-videos`` and its 200k-video state and compute time are extrapolated linearly (labelled so).

The two compute different things (YT8MMetrics: GAP/mAP over each video's top-20 plus Hit@1 and PERR;
torchmetrics: macro AP over all predictions); the comparison is of cost. Targets: <= 512 B of state per video,
>= 50k videos/s update.

    python benchmarks/metrics.py                      # 200k videos, 20k for torchmetrics
    python benchmarks/metrics.py --videos 20000 --reference-videos 2000
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAveragePrecision

from lightning_distill.evaluation.metrics import YT8MMetrics

TARGET_BYTES_PER_VIDEO = 512
TARGET_VIDEOS_PER_S = 50_000


@dataclass
class Measurement:
    """One metric's cost: ``videos`` fed to ``update`` in ``update_s`` seconds, then one ``compute``.

    ``topk_s``: a bare ``torch.topk(probs, 21)`` timed on each batch just before its update, the floor of any
    top-20 update; their ratio holds up when other processes share the core and the absolute numbers do not.
    """

    name: str
    videos: int
    update_s: float
    compute_s: float
    state_bytes: int
    topk_s: float

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.update_s

    @property
    def bytes_per_video(self) -> float:
        return self.state_bytes / self.videos


def batches(videos: int, batch_size: int, num_classes: int, labels_per_video: int, seed: int) -> Iterator[tuple]:
    """(probs (B, C) float32 uniform, labels (B, C) float32 with ``labels_per_video`` random ones per row)."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, videos, batch_size):
        size = min(batch_size, videos - start)
        probs = torch.rand(size, num_classes, generator=generator)
        classes = torch.randint(num_classes, (size, labels_per_video), generator=generator)
        labels = torch.zeros(size, num_classes).scatter_(1, classes, 1.0)
        yield probs, labels


def state_bytes(metric: Metric) -> int:
    """Bytes of every tensor in the metric's state (list states summed over their elements)."""
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        tensors = value if isinstance(value, list) else [value]
        total += sum(t.nbytes for t in tensors)
    return total


def measure(name: str, metric: Metric, args: argparse.Namespace, videos: int, integer_targets: bool) -> Measurement:
    """Time ``update`` over all batches (generation excluded) and one ``compute``."""
    update_s = topk_s = 0.0
    for probs, labels in batches(videos, args.batch_size, args.classes, args.labels_per_video, args.seed):
        target = labels.long() if integer_targets else labels
        start = time.perf_counter()
        torch.topk(probs, 21, dim=1)
        topk_s += time.perf_counter() - start
        start = time.perf_counter()
        metric.update(probs, target)
        update_s += time.perf_counter() - start
    bytes_held = state_bytes(metric)
    start = time.perf_counter()
    metric.compute()
    return Measurement(name, videos, update_s, time.perf_counter() - start, bytes_held, topk_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=200_000)
    parser.add_argument("--reference-videos", type=int, default=20_000, help="videos fed to torchmetrics")
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--labels-per-video", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = the one-core number)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours = measure("YT8MMetrics (top-20)", YT8MMetrics(args.classes), args, args.videos, integer_targets=False)
    # Classes without a true label in the sample are expected at this size; torchmetrics warns for each.
    warnings.filterwarnings("ignore", message="No positive samples found in target")
    reference = MultilabelAveragePrecision(
        num_labels=args.classes, average="macro", thresholds=None, validate_args=False
    )
    theirs = measure("torchmetrics MultilabelAveragePrecision", reference, args, args.reference_videos, True)
    scale = args.videos / args.reference_videos

    print(f"{args.classes} classes, batches of {args.batch_size}, {args.threads} thread(s)\n")
    print(f"| metric | videos fed | update videos/s | compute s | state B/video | state at {args.videos:,} videos |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, extrapolated in ((ours, False), (theirs, scale != 1)):
        note = f" (extrapolated from {m.videos:,})" if extrapolated else ""
        compute_s = m.compute_s * (scale if extrapolated else 1)
        print(
            f"| {m.name} | {m.videos:,} | {m.videos_per_s:,.0f} | {compute_s:.2f}{note} | {m.bytes_per_video:,.0f} "
            f"| {m.bytes_per_video * args.videos / 2**20:,.0f} MiB{note} |"
        )
    print(
        f"\nRatios: update throughput ours / torchmetrics {ours.videos_per_s / theirs.videos_per_s:.2f}x; "
        f"state per video torchmetrics / ours {theirs.bytes_per_video / ours.bytes_per_video:.0f}x; "
        f"compute time at {args.videos:,} videos torchmetrics / ours {theirs.compute_s * scale / ours.compute_s:.0f}x"
    )
    print(
        f"Bare torch.topk(k=21) on the same batches, interleaved: {ours.videos / ours.topk_s:,.0f} videos/s "
        f"(YT8MMetrics.update takes {ours.update_s / ours.topk_s:.2f}x its time)"
    )
    print(
        f"Targets: state {ours.bytes_per_video:.0f} B/video (<= {TARGET_BYTES_PER_VIDEO}: "
        f"{'met' if ours.bytes_per_video <= TARGET_BYTES_PER_VIDEO else 'MISSED'}), "
        f"update {ours.videos_per_s:,.0f} videos/s (>= {TARGET_VIDEOS_PER_S:,}: "
        f"{'met' if ours.videos_per_s >= TARGET_VIDEOS_PER_S else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
