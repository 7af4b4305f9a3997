"""Which frames a skim chooses, checked against the synthetic data's ground truth: events hit, Uniform-k vs skim.

Synthetic labels are evidenced by events (``<split>_events.jsonl`` beside the records, ``data/synthetic.py``). For
each k this counts the (video, leaf label) pairs of a split with at least one event frame among the k frames read,
for Uniform-k and for ``SkimSampler`` with a trained skim, side by side on the same videos.

    python benchmarks/skim_events.py --experiment runs/skim-netvlad --scorer skim-s0 --ks 6 10 30

(or ``--data DIR --store STORE.h5 --scorer_checkpoint CKPT`` outside an experiment.) On the data set of
``benchmarks/independent_data.py``, ``--truth DIR/truth-test.jsonl`` reads its localised evidence instead: the spans
of the video's annotated labels (short shots, audio bursts, the scenes of order and combination labels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import KFrameSampler, ScoredSampler, UniformSampler
from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.training.skim_sampler import SkimSampler

BATCH = 256


def chosen_frames(sampler: KFrameSampler, store: FrameStore, videos: np.ndarray) -> list[list[int]]:
    """The frames ``sampler`` reads of each of ``videos`` (a scored sampler reads every frame to choose)."""
    lengths = torch.from_numpy(np.minimum(store.lengths[videos], MAX_FRAMES))
    if isinstance(sampler, ScoredSampler):
        positions = sampler.skimmed_positions(lengths)
        seen = store.read_frames(videos, positions.numpy())
        skimmed = sampler.side_by_side(lambda columns: seen[..., columns])
        return sampler.indices_from_frames(lengths, positions, torch.from_numpy(skimmed)).tolist()
    return sampler.indices(lengths).tolist()


def events_hit(sampler: KFrameSampler, store: FrameStore, events: dict[str, list[list[int]]]) -> float:
    """Share of (video, labelled event class) pairs with an event frame among the frames ``sampler`` reads."""
    hit = total = 0
    for start in range(0, len(store), BATCH):
        videos = np.arange(start, min(len(store), start + BATCH))
        for video, frames in zip(videos, chosen_frames(sampler, store, videos)):
            by_label: dict[int, bool] = {}
            for label, first, end in events[store.video_ids[video]]:
                by_label[label] = by_label.get(label, False) or any(first <= f < end for f in frames)
            hit += sum(by_label.values())
            total += len(by_label)
    return hit / total


def read_events(path: Path, independent: bool) -> dict[str, list[list[int]]]:
    """Video id -> its [label, first frame, end frame) events: from our generator's ``<split>_events.jsonl``, or
    (``independent``) from ``truth-<split>.jsonl``, whose spans end at their last frame and may belong to labels
    left unannotated (dropped: the metrics count annotated labels)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    if not independent:
        return {record["id"]: record["events"] for record in records}
    return {
        record["id"]: [[label, first, last + 1] for label, first, last in record["spans"] if label in record["labels"]]
        for record in records
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, help="a finished vdistill experiment with a skim (selection: skim)")
    parser.add_argument("--scorer", default="skim-s0", help="the experiment's skim cell")
    parser.add_argument("--data", type=Path, help="synthetic data folder (default: the experiment's data/)")
    parser.add_argument("--store", type=Path, help="the split's frame store (default: <data>/stores/test.h5)")
    parser.add_argument("--scorer_checkpoint", type=Path, help="the skim (default: the experiment's skim cell)")
    parser.add_argument("--split", default="test", help="the split whose events are counted")
    parser.add_argument("--truth", type=Path, help="truth-<split>.jsonl of benchmarks/independent_data.py instead")
    parser.add_argument("--ks", type=int, nargs="+", default=[6, 10, 30])
    args = parser.parse_args()
    data = args.data or args.experiment / "data"
    store = FrameStore(args.store or data / "stores" / f"{args.split}.h5")
    checkpoint = args.scorer_checkpoint or args.experiment / "cells" / args.scorer / "fit" / "checkpoints" / "best.ckpt"
    events = read_events(args.truth or data / f"{args.split}_events.jsonl", independent=args.truth is not None)
    results = {}
    print(f"(video, label) pairs whose events the frames read hit, {args.split} split, {len(store)} videos")
    for k in args.ks:
        uniform = events_hit(UniformSampler(k), store, events)
        skim = events_hit(SkimSampler(k, str(checkpoint)), store, events)
        results[k] = {"uniform": uniform, "skim": skim}
        print(f"k={k:3d}  Uniform-k {uniform:.3f}  skim {skim:.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
