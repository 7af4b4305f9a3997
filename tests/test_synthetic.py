"""The synthetic generator writes valid YouTube-8M 2018 frame-level TFRecords with label events in time.

Records are parsed here with ``tfrecord.example_pb2`` and checksums recomputed with ``crc32c``, so these tests
do not depend on any of the product's readers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest
import torch
from tfrecord import example_pb2

from lightning_distill.data.samplers import (
    AllFramesSampler,
    FirstSampler,
    FrameSampler,
    LastSampler,
    UniformSampler,
)
from lightning_distill.data.synthetic import generate, write_tfrecord
from lightning_distill.data.yt8m import AUDIO_DIM, MAX_FRAMES, RGB_DIM, dequantize
from lightning_distill.errors import DataError

SMALL = dict(train_videos=60, validate_videos=20, test_videos=20, num_classes=16, min_frames=30, max_frames=120)


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """Split a TFRecord file into records, asserting both CRCs of every record."""
    data, pos, records = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert length_crc == masked_crc(header)
        record = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked_crc(record)
        records.append(record)
        pos += 16 + length
    assert pos == len(data)
    return records


def parse(record: bytes) -> tuple[str, list[int], np.ndarray, np.ndarray]:
    """id, labels, rgb (n, 1024) uint8, audio (n, 128) uint8; asserts every frame's byte length."""
    example = example_pb2.SequenceExample.FromString(record)
    context = example.context.feature
    lists = example.feature_lists.feature_list
    rgb = [f.bytes_list.value[0] for f in lists["rgb"].feature]
    audio = [f.bytes_list.value[0] for f in lists["audio"].feature]
    assert all(len(f.bytes_list.value) == 1 for f in lists["rgb"].feature)
    assert {len(b) for b in rgb} == {RGB_DIM} and {len(b) for b in audio} == {AUDIO_DIM}
    assert len(rgb) == len(audio)
    to_array = lambda frames: np.frombuffer(b"".join(frames), np.uint8).reshape(len(frames), -1)  # noqa: E731
    return (
        context["id"].bytes_list.value[0].decode(),
        list(context["labels"].int64_list.value),
        to_array(rgb),
        to_array(audio),
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    out = tmp_path_factory.mktemp("syn") / "nested" / "dir"  # created by generate
    return out, generate(out, seed=3, shards_per_split=2, **SMALL)


def test_records_are_valid_2018_frame_level(small):
    out, written = small
    assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(
        f"{split}{i:04d}.tfrecord" for split in ("train", "validate", "test") for i in range(2)
    )
    ids = []
    for split, paths in written.items():
        videos = [parse(r) for p in paths for r in read_records(p)]
        assert len(videos) == SMALL[f"{split}_videos"]
        for video_id, labels, rgb, _ in videos:
            assert len(video_id) == 4
            assert 1 <= len(labels) <= 4 and len(set(labels)) == len(labels)
            assert all(0 <= c < SMALL["num_classes"] for c in labels)
            assert SMALL["min_frames"] <= len(rgb) <= SMALL["max_frames"]
        ids += [v[0] for v in videos]
    assert len(set(ids)) == len(ids) == 100


def test_same_seed_same_bytes_other_seed_other_data(small, tmp_path):
    out, _ = small
    again = generate(tmp_path / "a", seed=3, shards_per_split=2, **SMALL)
    for paths in again.values():
        for p in paths:
            assert p.read_bytes() == (out / p.name).read_bytes()
    other = generate(tmp_path / "b", seed=4, shards_per_split=2, **SMALL)
    assert other["train"][0].read_bytes() != again["train"][0].read_bytes()


def test_unlabelled_test_split_has_empty_labels(tmp_path):
    written = generate(tmp_path, unlabelled_test=True, shards_per_split=1, **SMALL)
    assert all(parse(r)[1] == [] for r in read_records(written["test"][0]))
    assert all(parse(r)[1] for r in read_records(written["validate"][0]))


def test_label_noise_corrupts_train_and_validate_records_only_and_is_measured(small, tmp_path):
    out, _ = small
    noisy = generate(tmp_path, seed=3, shards_per_split=2, missing_labels=0.3, spurious_labels=0.5, **SMALL)
    dropped = true = added = records = 0
    for split, paths in noisy.items():
        truth = {row["id"]: row for row in _ground_truth(tmp_path, split)}
        clean = {v[0]: v for p in (out / q.name for q in paths) for v in map(parse, read_records(p))}
        for video_id, labels, rgb, audio in (parse(r) for p in paths for r in read_records(p)):
            row = truth[video_id]
            # The same videos as without noise (its own random stream); only the written labels change.
            assert np.array_equal(rgb, clean[video_id][2]) and labels == row["written_labels"]
            assert row["labels"] == clean[video_id][1]
            if split == "test":
                assert labels == row["labels"]
                continue
            true += len(row["labels"])
            dropped += len(set(row["labels"]) - set(labels))
            added += len(set(labels) - set(row["labels"]))
            records += 1
    rates = json.loads((tmp_path / "label_noise.json").read_text())
    assert rates == {"missing_labels": dropped / true, "spurious_labels_per_video": added / records, "records": records}
    assert 0.15 < rates["missing_labels"] < 0.45 and 0.25 < rates["spurious_labels_per_video"] < 0.75


def test_write_tfrecord_framing_round_trips(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 3]
    assert write_tfrecord(tmp_path / "r.tfrecord", records) == 3
    assert read_records(tmp_path / "r.tfrecord") == records
    assert [p.name for p in tmp_path.iterdir()] == ["r.tfrecord"]  # no temp file left behind


def _ground_truth(out: Path, split: str) -> list[dict]:
    """The rows of ``<split>_events.jsonl``: id, num_frames, labels, written_labels, intro, outro and the
    [label, start, end) events."""
    return [json.loads(line) for line in (out / f"{split}_events.jsonl").read_text().splitlines()]


def _frames_and_events(out: Path, split: str) -> list[tuple[np.ndarray, list[int], list[list[int]]]]:
    """(dequantised (n, 1152) frames, labels, [label, start, end) events) per video of ``split``."""
    truth = {row["id"]: row for row in _ground_truth(out, split)}
    videos = []
    for path in sorted(out.glob(f"{split}*.tfrecord")):
        for record in read_records(path):
            video_id, labels, rgb, audio = parse(record)
            assert truth[video_id]["labels"] == labels and truth[video_id]["num_frames"] == len(rgb)
            frames = dequantize(np.concatenate([rgb, audio], axis=1))
            videos.append((frames, labels, truth[video_id]["events"]))
    return videos


def test_event_frames_carry_their_class_signature(small):
    """A class direction estimated on train separates in-event from out-of-event frames on validate+test."""
    out, _ = small
    train = _frames_and_events(out, "train")
    held_out = _frames_and_events(out, "validate") + _frames_and_events(out, "test")
    aucs = []
    for label in range(SMALL["num_classes"]):
        inside, outside = _split_frames(train, label)
        if len(inside) == 0:
            continue
        direction = inside.mean(0) - outside.mean(0)
        inside, outside = _split_frames(held_out, label)
        if len(inside) == 0:
            continue
        a, b = inside @ direction, outside @ direction
        aucs.append((a[:, None] > b[None, :]).mean())  # P(in-event frame scores above an out-of-event one)
    assert len(aucs) >= 8
    assert np.median(aucs) > 0.9


def _split_frames(videos, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames inside ``label``'s events, and frames of the same videos outside them."""
    inside, outside = [], []
    for frames, _, events in videos:
        mask = np.zeros(len(frames), bool)
        for c, start, end in events:
            if c == label:
                mask[start:end] = True
        if mask.any():
            inside.append(frames[mask])
            outside.append(frames[~mask])
    if not inside:
        return np.empty((0, 1152)), np.empty((0, 1152))
    return np.concatenate(inside), np.concatenate(outside)


def test_events_are_spread_over_the_whole_length_and_vary_in_duration(small):
    out, _ = small
    rows = [row for split in ("train", "validate", "test") for row in _ground_truth(out, split)]
    centres = np.array([(s + e) / 2 / r["num_frames"] for r in rows for _, s, e in r["events"]])
    durations = np.array([(e - s) / r["num_frames"] for r in rows for _, s, e in r["events"]])
    # Event centres cover every fifth of the video, roughly evenly (not bunched at the start).
    counts = np.histogram(centres, bins=5, range=(0, 1))[0]
    assert counts.min() > 0.5 * counts.mean()
    seconds = np.array([e - s for r in rows for _, s, e in r["events"]])
    assert (seconds <= 4).mean() > 0.6 and (durations > 0.05).mean() > 0.05  # mostly brief, some long events
    # Every leaf label (all but the first, the vertical) has at least one event.
    for r in rows:
        assert set(r["labels"][1:]) <= {c for c, _, _ in r["events"]}


def test_k_frame_views_miss_events_the_teacher_sees(tmp_path):
    """The paper's question is real: every leaf label's evidence is in the all-frames view, while k spread-out
    frames miss all events of some labels (more at k=6 than at k=30), and First-/Last-k miss more still."""
    generate(tmp_path, train_videos=300, validate_videos=0, test_videos=0)
    rows = _ground_truth(tmp_path, "train")

    def missed(sampler: FrameSampler) -> float:
        """Fraction of (video, leaf label) pairs none of whose event frames is in the sampler's view."""
        pairs = hits = 0
        for row in rows:
            view = set(sampler.indices(torch.tensor([min(row["num_frames"], MAX_FRAMES)]))[0].tolist())
            for label in set(row["labels"][1:]):
                pairs += 1
                hits += any(view & set(range(s, e)) for c, s, e in row["events"] if c == label)
        return 1 - hits / pairs

    views = {
        "all": AllFramesSampler(),
        "u30": UniformSampler(30),
        "u6": UniformSampler(6),
        "first6": FirstSampler(6),
        "last6": LastSampler(6),
    }
    rates = {name: missed(sampler) for name, sampler in views.items()}
    assert rates["all"] == 0
    assert 0.15 < rates["u30"] < 0.45 and rates["u6"] > rates["u30"] + 0.25
    assert min(rates["first6"], rates["last6"]) > rates["u6"] + 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_frames=50, max_frames=40), "min_frames=50 exceeds max_frames=40"),
        (dict(num_classes=1), "num_classes=1"),
        (dict(min_frames=0), "min_frames=0"),
        (dict(train_videos=-1), "train_videos=-1"),
        (dict(labels_per_video=(3, 2)), "labels_per_video=(3, 2)"),
        (dict(shards_per_split=0), "shards_per_split=0"),
    ],
)
def test_bad_arguments_raise_data_error(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


def test_features_stay_inside_the_quantisation_range(small):
    """Clipping at [-2, 2) would distort the signal: saturated bytes must be vanishingly rare."""
    out, written = small
    frames = np.concatenate([np.concatenate(parse(r)[2:], axis=1) for r in read_records(written["train"][0])])
    assert ((frames == 0) | (frames == 255)).mean() < 1e-4
