"""Scoring videos with an exported model, without Lightning: frames read as the model's sampler chooses them,
the exported graph run on them, a Kaggle prediction file and YouTube-8M metrics out.

Videos come from a frame store (only the chosen frames are read) or straight from TFRecord shards (each record
decoded, its chosen frames kept). The sampler is rebuilt from the model's metadata, so a k-frame student reads k
frames per video here as it did in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_distill.data.convert import resolve_inputs
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import FrameSampler
from lightning_distill.data.yt8m import RGB_DIM
from lightning_distill.data.tfrecord_reader import read_records
from lightning_distill.deployment.export import build_from_config, load_exported
from lightning_distill.errors import ConfigError, DataError
from lightning_distill.evaluation.metrics import YT8MMetrics
from lightning_distill.evaluation.prediction_file import prediction_file

STORE_SUFFIXES = (".h5", ".hdf5")


@dataclass
class Batch:
    """Videos to score: ids, (B, C) multi-hot labels, (B, T, 1152) uint8 frames (rgb then audio)."""

    video_ids: list[str]
    labels: np.ndarray
    frames: np.ndarray


def score(
    model: str | Path,
    data: str,
    *,
    predictions: str | Path | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Run an exported model over ``data``; write ``predictions`` if given; return YouTube-8M metrics (empty when
    no video has labels).

    Args:
        model: an ``.onnx`` or TorchScript file written by ``vdistill export``.
        data: a frame store (.h5) or TFRecord shards (a glob, or several separated by commas).
        predictions: where to write the Kaggle prediction file.
        batch_size: videos per run of the model.
    """
    run, metadata = load_exported(model)
    sampler: FrameSampler = build_from_config(json.loads(metadata["sampler"]))
    num_classes, max_frames = int(metadata["num_classes"]), int(metadata["max_frames"])
    if data.endswith(STORE_SUFFIXES):
        batches = _store_batches(Path(data), sampler, batch_size, num_classes, max_frames)
    else:
        batches = _record_batches(data, sampler, batch_size, num_classes, max_frames)
    metric = YT8MMetrics(num_classes)
    labelled = False
    with prediction_file(predictions) if predictions else nullcontext(lambda ids, probabilities: None) as write:
        for batch in batches:
            probabilities = torch.from_numpy(run({"rgb": batch.frames[..., :RGB_DIM], "audio": batch.frames[..., RGB_DIM:]}))
            write(batch.video_ids, probabilities)
            metric.update(probabilities, torch.from_numpy(batch.labels))
            labelled |= bool(batch.labels.any())
    return {name: float(value) for name, value in metric.compute().items()} if labelled else {}


def _store_batches(
    path: Path, sampler: FrameSampler, batch_size: int, num_classes: int, max_frames: int
) -> Iterator[Batch]:
    store = FrameStore(path)
    if store.num_classes != num_classes:
        raise ConfigError(f"{path} has {store.num_classes} classes but the model predicts {num_classes}: score data of its vocabulary")
    for number, start in enumerate(range(0, len(store), batch_size)):
        videos = np.arange(start, min(start + batch_size, len(store)))
        lengths = torch.from_numpy(np.minimum(store.lengths[videos], max_frames))
        indices = sampler.indices(lengths, _generator(number)).numpy()
        yield Batch([store.video_ids[i] for i in videos], store.multi_hot(videos), store.read_frames(videos, indices))


def _record_batches(
    pattern: str, sampler: FrameSampler, batch_size: int, num_classes: int, max_frames: int
) -> Iterator[Batch]:
    shards = resolve_inputs([p.strip() for p in pattern.split(",") if p.strip()])
    pending: list = []
    number = 0
    for shard in shards:
        for record in read_records(shard):
            if record.rgb.dtype != np.uint8:
                raise DataError(f"{shard}: video-level records hold no frames to score; give frame-level records")
            pending.append(record)
            if len(pending) == batch_size:
                yield _record_batch(pending, sampler, num_classes, max_frames, number, shard)
                pending, number = [], number + 1
    if pending:
        yield _record_batch(pending, sampler, num_classes, max_frames, number, shards[-1])


def _record_batch(
    records: list, sampler: FrameSampler, num_classes: int, max_frames: int, number: int, shard: Path
) -> Batch:
    lengths = torch.tensor([min(r.num_frames, max_frames) for r in records])
    indices = sampler.indices(lengths, _generator(number)).numpy()
    frames = np.stack([np.concatenate([r.rgb[i], r.audio[i]], axis=1) for r, i in zip(records, indices)])
    labels = np.zeros((len(records), num_classes), np.float32)
    for row, record in enumerate(records):
        if record.labels.size and record.labels.max() >= num_classes:
            raise ConfigError(
                f"{shard}: video {record.video_id!r} has label {record.labels.max()}, but the model predicts "
                f"{num_classes} classes: score data of its vocabulary"
            )
        labels[row, record.labels] = 1.0
    return Batch([r.video_id for r in records], labels, frames)


def _generator(number: int) -> torch.Generator:
    """Random samplers draw the same frames for batch ``number`` on every run."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([0, number]).generate_state(1)[0]))
