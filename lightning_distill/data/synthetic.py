"""Synthetic YouTube-8M: 2018 frame-level TFRecords whose labels are evidenced by events in time.

Real YouTube-8M cannot be downloaded in CI (1.53 TB), so the demo, the tests and the experiment table run on
videos drawn here. The data is built so that the paper's question is real on it:

* Every label of a video is evidenced by one or more *events*: mostly brief ones (1-4 s) that a k-frame
  view often misses (30 frames of a 300 s video lie 10 s apart), some longer (5-20% of the content) that a
  spread-out view catches. Events sit anywhere in the content, so Uniform-k beats First-k / Middle-k / Last-k.
  By the ground-truth events, the frames of Uniform-30 miss every event of about 30% of the leaf labels,
  Uniform-6 of about 70%, First-6 and Last-6 of 90% and more (tests/test_synthetic.py).
* Evidence sits on top of per-frame noise and a weaker per-video "scene" nuisance in all 1152 dimensions. A
  frame inside an event is clear once a model knows the class's direction, but that direction must be learned
  from a few thousand videos. The defaults are set so that the tiny models of the ``quick`` experiment can
  learn it: with a scene nuisance 4x stronger, or 32 classes instead of 16, an all-frames H-RNN teacher
  memorised its 2,000 training videos before it learned the brief events and ended level with a Uniform-30
  H-RNN, however long it trained, so there was nothing for a student to learn from it.
* Classes form a hierarchy like YouTube-8M's ("Games" > "Video game" > "Minecraft"): the first classes are
  *verticals* evidenced weakly over the whole content, the rest are *leaves* whose signatures lean towards
  their vertical's and which co-occur with it. A k-frame model trained on hard labels is told about events
  it never saw; the teacher's soft predictions say how likely each label is given the video, and carry the
  co-occurrence structure, which is what distillation passes on.
* Many videos open with a short intro card and close with an end screen (no evidence), longer at the end,
  so Last-k is the worst view, as in the paper.

Ground-truth events are written beside the records (``<split>_events.jsonl``) for studies and tests; the
YouTube-8M readers only look at ``*.tfrecord``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from lightning_distill.data import example_proto
from lightning_distill.data.yt8m import DEQUANT_BIAS, DEQUANT_SCALE, FEATURE_DIM, RGB_DIM, write_vocabulary
from lightning_distill.errors import DataError

SPLITS = ("train", "validate", "test")

# YouTube-8M 2018 ids are 4 characters from this alphabet.
_ID_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
_CRC_MASK_DELTA = 0xA282EAD8


@dataclass(frozen=True)
class SignalConfig:
    """How strong, how long and how noisy the evidence is; features are in dequantised units ([-2, 2)).

    Amplitudes are lengths of vectors in the joint 1152-d frame space, so ``event_amplitude / noise_std`` is
    a single frame's signal-to-noise ratio along the class's direction.

    Attributes:
        noise_std: per-dimension std of independent per-frame noise.
        scene_std: per-dimension std of the per-video background, constant over the video.
        vertical_amplitude: strength of a vertical's evidence, present in every content frame.
        event_amplitude: mean strength of a leaf label's event (each event varies by +-30%).
        parent_share: how much a leaf's signature leans towards its vertical's (0 = unrelated).
        brief_probability: chance that an event is brief rather than long.
        brief_seconds: (min, max) length of a brief event.
        long_fraction: (min, max) length of a long event as a fraction of the video's content.
        max_extra_events: each leaf label gets 1 + Binomial(max_extra_events, 0.3) events.
        intro_probability: chance that a video opens with an intro card.
        intro_seconds: (min, max) intro length.
        outro_probability: chance that a video ends with an end screen.
        outro_seconds: (min, max) end-screen length.
        foreign_leaf_probability: chance that a leaf label comes from another vertical.
    """

    noise_std: float = 0.25
    scene_std: float = 0.05
    vertical_amplitude: float = 0.5
    event_amplitude: float = 3.0
    parent_share: float = 0.5
    brief_probability: float = 0.85
    brief_seconds: tuple[int, int] = (1, 4)
    long_fraction: tuple[float, float] = (0.05, 0.2)
    max_extra_events: int = 2
    intro_probability: float = 0.3
    intro_seconds: tuple[int, int] = (2, 8)
    outro_probability: float = 0.5
    outro_seconds: tuple[int, int] = (5, 20)
    foreign_leaf_probability: float = 0.1


@dataclass(frozen=True)
class Event:
    """A stretch of frames [start, end) that evidences ``label``."""

    label: int
    start: int
    end: int


@dataclass
class SyntheticVideo:
    """One drawn video: features as stored (uint8) and the ground truth that produced them.

    Attributes:
        video_id: 4-character id.
        labels: (L,) int64 class ids, vertical first.
        rgb: (n, 1024) uint8.
        audio: (n, 128) uint8.
        events: the label events, in frame indices.
        intro: frames of intro card at the start.
        outro: frames of end screen at the end.
    """

    video_id: str
    labels: np.ndarray
    rgb: np.ndarray
    audio: np.ndarray
    events: list[Event]
    intro: int
    outro: int


@dataclass(frozen=True)
class World:
    """The class structure shared by all splits of one generated data set.

    Attributes:
        num_verticals: classes [0, num_verticals) are verticals, the rest leaves.
        parent: (C,) vertical of each class (a vertical is its own parent).
        popularity: (C,) sampling weight of each class within its level.
        signatures: (C, 1152) unit vectors, each class's direction in frame space.
        intro_card: (1152,) the generic intro frame.
        end_card: (1152,) the generic end-screen frame.
    """

    num_verticals: int
    parent: np.ndarray
    popularity: np.ndarray
    signatures: np.ndarray
    intro_card: np.ndarray
    end_card: np.ndarray


def write_tfrecord(path: Path, records: Iterable[bytes]) -> int:
    """Write serialized records to ``path`` with TFRecord framing, atomically; returns the record count.

    Framing per record: uint64 LE length, uint32 LE masked CRC32C of those 8 bytes, the data, uint32 LE masked
    CRC32C of the data. The file appears under its name only once complete (temp file + ``os.replace``), so a
    crash never leaves a truncated shard that a reader would reject later.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length)
            f.write(struct.pack("<I", _masked_crc(length)))
            f.write(data)
            f.write(struct.pack("<I", _masked_crc(data)))
            count += 1
    os.replace(tmp, path)
    return count


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C (rotating and offsetting keeps CRCs of CRC-containing data well spread)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def quantize(features: np.ndarray) -> np.ndarray:
    """Float features -> uint8, the inverse of ``yt8m.dequantize`` up to rounding; clips to [-2, 2)."""
    q = np.rint((features - DEQUANT_BIAS) / DEQUANT_SCALE)
    return np.clip(q, 0, 255).astype(np.uint8)


def make_world(num_classes: int, rng: np.random.Generator, signal: SignalConfig) -> World:
    """Draw the class hierarchy, popularities and signatures.

    About one class in eight is a vertical, as YouTube-8M's top-level entities are few and frequent.
    Each class's evidence lives in rgb only, audio only, or both (60%), like real entities (music is heard,
    a logo is seen).
    """
    num_verticals = max(1, num_classes // 8)
    parent = np.concatenate([np.arange(num_verticals), np.arange(num_classes - num_verticals) % num_verticals])
    # Zipf-like popularity: a few classes are common, most are rare, as in YouTube-8M.
    rank = np.concatenate([np.arange(num_verticals), np.arange(num_classes - num_verticals) // num_verticals])
    popularity = 1.0 / (rank + 1.0) ** 0.7

    raw = rng.standard_normal((num_classes, FEATURE_DIM))
    modality = rng.choice(3, size=num_classes, p=[0.2, 0.2, 0.6])  # 0 rgb only, 1 audio only, 2 both
    raw[modality == 0, RGB_DIM:] = 0.0
    raw[modality == 1, :RGB_DIM] = 0.0
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    leaves = np.arange(num_verticals, num_classes)
    raw[leaves] = signal.parent_share * raw[parent[leaves]] + (1.0 - signal.parent_share) * raw[leaves]
    signatures = raw / np.linalg.norm(raw, axis=1, keepdims=True)

    cards = rng.standard_normal((2, FEATURE_DIM)) * signal.scene_std
    return World(num_verticals, parent, popularity, signatures.astype(np.float32), cards[0], cards[1])


def draw_video(
    world: World,
    rng: np.random.Generator,
    video_id: str,
    num_frames: int,
    num_labels: int,
    signal: SignalConfig,
) -> SyntheticVideo:
    """Draw one video of ``num_frames`` seconds with ``num_labels`` labels (its vertical and leaves)."""
    verticals = np.arange(world.num_verticals)
    vertical = int(rng.choice(verticals, p=_normalised(world.popularity[verticals])))
    labels = [vertical] + _draw_leaves(world, rng, vertical, num_labels - 1, signal.foreign_leaf_probability)

    intro = _segment(rng, signal.intro_probability, signal.intro_seconds, num_frames)
    outro = _segment(rng, signal.outro_probability, signal.outro_seconds, num_frames)
    content = slice(intro, num_frames - outro)
    content_len = content.stop - content.start

    frames = rng.standard_normal((num_frames, FEATURE_DIM), dtype=np.float32) * np.float32(signal.noise_std)
    scene = rng.standard_normal(FEATURE_DIM).astype(np.float32) * np.float32(signal.scene_std)
    frames[content] += scene + np.float32(signal.vertical_amplitude) * world.signatures[vertical]
    frames[:intro] += world.intro_card.astype(np.float32)
    frames[num_frames - outro :] += world.end_card.astype(np.float32)

    events: list[Event] = []
    for label in labels[1:]:
        for _ in range(1 + rng.binomial(signal.max_extra_events, 0.3)):
            if rng.random() < signal.brief_probability:
                length = int(rng.integers(signal.brief_seconds[0], signal.brief_seconds[1] + 1))
            else:
                length = int(round(rng.uniform(*signal.long_fraction) * content_len))
            length = min(max(length, 1), content_len)
            # Events may run past either edge of the content and be cut there: every second of content is
            # then equally likely to hold evidence, so no view gains from avoiding the edges.
            start = content.start + int(rng.integers(1 - length, content_len))
            start, end = max(start, content.start), min(start + length, content.stop)
            amplitude = signal.event_amplitude * rng.uniform(0.7, 1.3)
            frames[start:end] += np.float32(amplitude) * world.signatures[label]
            events.append(Event(label, start, end))

    quantized = quantize(frames)
    return SyntheticVideo(
        video_id=video_id,
        labels=np.asarray(labels, dtype=np.int64),
        rgb=quantized[:, :RGB_DIM],
        audio=quantized[:, RGB_DIM:],
        events=events,
        intro=intro,
        outro=outro,
    )


def _normalised(weights: np.ndarray) -> np.ndarray:
    """Weights scaled to sum to 1, as ``rng.choice`` needs."""
    return weights / weights.sum()


def _draw_leaves(
    world: World, rng: np.random.Generator, vertical: int, count: int, foreign_probability: float
) -> list[int]:
    """Distinct leaves, mostly children of ``vertical`` (co-occurrence), sometimes from any vertical."""
    leaves = np.arange(world.num_verticals, len(world.parent))
    own = leaves[world.parent[leaves] == vertical]
    chosen: list[int] = []
    for _ in range(count):
        pool = own if own.size and rng.random() >= foreign_probability else leaves
        pool = pool[~np.isin(pool, chosen)]
        if pool.size == 0:
            pool = leaves[~np.isin(leaves, chosen)]
        if pool.size == 0:
            break
        chosen.append(int(rng.choice(pool, p=_normalised(world.popularity[pool]))))
    return chosen


def _segment(rng: np.random.Generator, probability: float, seconds: tuple[int, int], num_frames: int) -> int:
    """Length of an intro or end screen; at most a fifth of the video, so content always dominates."""
    if rng.random() >= probability:
        return 0
    return min(int(rng.integers(seconds[0], seconds[1] + 1)), num_frames // 5)


def serialize(video: SyntheticVideo, with_labels: bool = True, labels: np.ndarray | None = None) -> bytes:
    """The video as a 2018 frame-level ``tf.SequenceExample`` (context id/labels, feature lists rgb/audio).

    Args:
        video: the video.
        with_labels: write its labels (else an empty list, like the real test split).
        labels: the labels to write instead of the true ones (label noise).
    """
    example = example_proto.SequenceExample()
    example.context.feature["id"].bytes_list.value.append(video.video_id.encode())
    written = example.context.feature["labels"].int64_list
    if with_labels:
        written.value.extend((video.labels if labels is None else labels).tolist())
    for key, array in (("rgb", video.rgb), ("audio", video.audio)):
        feature_list = example.feature_lists.feature_list[key]
        for frame in array:
            feature_list.feature.add().bytes_list.value.append(frame.tobytes())
    return example.SerializeToString()


def generate(
    output_dir: str | os.PathLike,
    *,
    train_videos: int = 2000,
    validate_videos: int = 500,
    test_videos: int = 500,
    num_classes: int = 16,
    min_frames: int = 30,
    max_frames: int = 300,
    labels_per_video: tuple[int, int] = (1, 4),
    shards_per_split: int = 2,
    seed: int = 0,
    unlabelled_test: bool = False,
    signal: SignalConfig = SignalConfig(),
    missing_labels: float = 0.0,
    spurious_labels: float = 0.0,
) -> dict[str, list[Path]]:
    """Write a synthetic YouTube-8M data set as 2018 frame-level TFRecords.

    Files are ``<split>NNNN.tfrecord`` (split in train/validate/test) plus ``<split>_events.jsonl`` with each
    video's ground-truth events. The same arguments give byte-identical files.

    Args:
        output_dir: created if missing.
        train_videos: videos in the train split.
        validate_videos: videos in the validate split.
        test_videos: videos in the test split.
        num_classes: classes; about one in eight is a vertical, the rest leaves.
        min_frames: shortest video, in one-second frames.
        max_frames: longest video.
        labels_per_video: (min, max) labels per video, inclusive; the vertical counts as one.
        shards_per_split: files per split (videos are divided evenly, in order).
        seed: everything drawn follows from it.
        unlabelled_test: write the test split with empty ``labels``, like the real test split.
        signal: strengths and lengths of the evidence.
        missing_labels: label noise, as YouTube-8M's machine-made labels have: the probability that each true
            label is left out of a train or validate record. The test split keeps every true label, so metrics
            measure what the model learned of the truth. ``<split>_events.jsonl`` keeps the truth and the written
            labels; ``label_noise.json`` the rates drawn.
        spurious_labels: label noise: the expected number of wrong labels (Poisson) added to each train or
            validate record, drawn uniformly from the classes the video does not have.

    Returns:
        The written shard paths of each split, in order.
    """
    counts = {"train": train_videos, "validate": validate_videos, "test": test_videos}
    _check_arguments(counts, num_classes, min_frames, max_frames, labels_per_video, shards_per_split)
    if not 0 <= missing_labels < 1 or spurious_labels < 0:
        raise DataError(
            f"missing_labels={missing_labels} must be in [0, 1) and spurious_labels={spurious_labels} >= 0"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    world_rng, ids_rng, *split_rngs = np.random.default_rng(seed).spawn(2 + len(SPLITS))
    # Its own stream: the same seed draws the same videos with or without label noise.
    noise = LabelNoise(missing_labels, spurious_labels, num_classes, np.random.default_rng([seed, 1]))
    world = make_world(num_classes, world_rng, signal)
    ids = _unique_ids(ids_rng, sum(counts.values()))

    written: dict[str, list[Path]] = {}
    first = 0
    for split, rng in zip(SPLITS, split_rngs):
        split_ids = ids[first : first + counts[split]]
        first += counts[split]
        lengths = rng.integers(min_frames, max_frames + 1, size=len(split_ids))
        num_labels = rng.integers(labels_per_video[0], labels_per_video[1] + 1, size=len(split_ids))
        with_labels = not (unlabelled_test and split == "test")
        corrupt = noise if split != "test" and (missing_labels or spurious_labels) else None
        events: list[dict] = []
        written[split] = []
        for shard, part in enumerate(np.array_split(np.arange(len(split_ids)), shards_per_split)):
            # Videos are drawn while the shard is written, so memory holds one video, not a split.
            videos = (draw_video(world, rng, split_ids[i], int(lengths[i]), int(num_labels[i]), signal) for i in part)
            path = out / f"{split}{shard:04d}.tfrecord"
            write_tfrecord(path, (_serialize_noting_events(v, with_labels, events, corrupt) for v in videos))
            written[split].append(path)
        _write_jsonl(out / f"{split}_events.jsonl", events)
    # Records say "2018" (3862 classes); this says the set's own vocabulary, for convert and the data module.
    write_vocabulary(out, num_classes)
    if missing_labels or spurious_labels:
        (out / "label_noise.json").write_text(json.dumps(noise.rates(), indent=2) + "\n")
    return written


class LabelNoise:
    """Corrupts the labels written to records (see ``generate``'s ``missing_labels`` and ``spurious_labels``),
    counting what it did.

    Args:
        missing: probability that a true label is left out.
        spurious: expected wrong labels added per record (Poisson).
        num_classes: the vocabulary spurious labels are drawn from.
        rng: its own random stream.
    """

    def __init__(self, missing: float, spurious: float, num_classes: int, rng: np.random.Generator) -> None:
        self.missing, self.spurious, self.num_classes, self.rng = missing, spurious, num_classes, rng
        self.true = self.dropped = self.added = self.records = 0

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """The labels to write for a video whose true labels are ``labels`` (sorted)."""
        kept = labels[self.rng.random(len(labels)) >= self.missing] if self.missing else labels
        others = np.setdiff1d(np.arange(self.num_classes), labels)
        count = min(int(self.rng.poisson(self.spurious)), len(others)) if self.spurious else 0
        added = self.rng.choice(others, count, replace=False) if count else np.empty(0, labels.dtype)
        self.true += len(labels)
        self.dropped += len(labels) - len(kept)
        self.added += count
        self.records += 1
        return np.concatenate([kept, added]).astype(labels.dtype)

    def rates(self) -> dict[str, float]:
        """The noise as drawn: the share of true labels left out and the wrong labels per record (train and
        validate splits)."""
        return {
            "missing_labels": self.dropped / max(self.true, 1),
            "spurious_labels_per_video": self.added / max(self.records, 1),
            "records": self.records,
        }


def _serialize_noting_events(
    video: SyntheticVideo, with_labels: bool, events: list[dict], noise: LabelNoise | None = None
) -> bytes:
    """Serialize ``video`` (its labels through ``noise`` if given) and append its ground truth (id, length, labels,
    written labels, intro, outro, events) to ``events``."""
    written = noise(video.labels) if noise is not None else video.labels
    events.append(
        {
            "id": video.video_id,
            "num_frames": int(video.rgb.shape[0]),
            "labels": video.labels.tolist(),
            "written_labels": written.tolist(),
            "intro": video.intro,
            "outro": video.outro,
            "events": [[e.label, e.start, e.end] for e in video.events],
        }
    )
    return serialize(video, with_labels, written)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, path)


def _unique_ids(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct 4-character ids (64**4 = 16.7M possible, so any sane count fits)."""
    codes = rng.choice(len(_ID_ALPHABET) ** 4, size=count, replace=False)
    digits = (codes[:, None] // len(_ID_ALPHABET) ** np.arange(4)) % len(_ID_ALPHABET)
    return [chars.tobytes().decode() for chars in _ID_ALPHABET[digits]]


def _check_arguments(
    counts: dict[str, int],
    num_classes: int,
    min_frames: int,
    max_frames: int,
    labels_per_video: tuple[int, int],
    shards_per_split: int,
) -> None:
    """Raise ``DataError`` naming the first bad argument and what would be valid."""
    for split, count in counts.items():
        if count < 0:
            raise DataError(f"{split}_videos={count} is negative; pass a count >= 0")
    if num_classes < 2:
        raise DataError(f"num_classes={num_classes} is too small; pass at least 2 (one vertical and one leaf)")
    if min_frames < 1:
        raise DataError(f"min_frames={min_frames} must be >= 1")
    if min_frames > max_frames:
        raise DataError(f"min_frames={min_frames} exceeds max_frames={max_frames}; pass min_frames <= max_frames")
    low, high = labels_per_video
    if not 1 <= low <= high <= num_classes:
        raise DataError(
            f"labels_per_video={labels_per_video} is invalid; pass (min, max) with 1 <= min <= max <= num_classes"
        )
    if shards_per_split < 1:
        raise DataError(f"shards_per_split={shards_per_split} must be >= 1")
    if sum(counts.values()) > len(_ID_ALPHABET) ** 4 // 2:
        raise DataError(f"{sum(counts.values())} videos exceed the 4-character id space; generate fewer videos")


__all__ = [
    "SPLITS",
    "Event",
    "SignalConfig",
    "SyntheticVideo",
    "World",
    "draw_video",
    "generate",
    "make_world",
    "quantize",
    "serialize",
    "write_tfrecord",
]
