"""The TFRecord reader: real 2018 shards, every record format, and every kind of damage."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tfrecord import example_pb2

from lightning_distill.data.tfrecord_reader import SourceFormat, detect_format, index_shard, read_records, shard_frames
from lightning_distill.errors import DataError
from yt8m_writer import (
    SHARED,
    frame_level_example,
    framed_payloads,
    needs_real_shards,
    random_video,
    video_level_example,
    write_tfrecord,
)

REAL_SHARDS = {"validate0000.tfrecord": 284, "validate0001.tfrecord": 305}


@needs_real_shards
@pytest.mark.parametrize("name", sorted(REAL_SHARDS))
def test_real_video_level_shard(name):
    path = SHARED / name
    records = list(read_records(path))  # verify_crc is on: every CRC of the shard checks out
    assert len(records) == REAL_SHARDS[name] == len(framed_payloads(path))
    assert detect_format(path) == SourceFormat("video", "2018", 3862)
    # Real 2018 ids are 4 characters of YouTube's url-safe alphabet, unique within a shard.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{4}", r.video_id) for r in records)
    assert len({r.video_id for r in records}) == len(records)
    assert all(r.labels.dtype == np.int64 and 0 <= r.labels.min() and r.labels.max() < 3862 for r in records)
    assert all(r.rgb.shape == (1, 1024) and r.rgb.dtype == np.float32 for r in records)
    assert all(r.audio.shape == (1, 128) and r.audio.dtype == np.float32 for r in records)


@needs_real_shards
@pytest.mark.parametrize("index", [0, 137, 283])
def test_real_records_match_protobuf(index):
    path = SHARED / "validate0000.tfrecord"
    expected = example_pb2.Example.FromString(framed_payloads(path)[index]).features.feature
    record = list(read_records(path))[index]
    assert record.video_id == expected["id"].bytes_list.value[0].decode()
    assert record.labels.tolist() == list(expected["labels"].int64_list.value)
    assert record.rgb[0].tolist() == pytest.approx(list(expected["mean_rgb"].float_list.value), abs=0)
    assert record.audio[0].tolist() == pytest.approx(list(expected["mean_audio"].float_list.value), abs=0)


@needs_real_shards
def test_first_real_record_by_hand():
    record = next(read_records(SHARED / "validate0000.tfrecord"))
    # Read off the shard with a protobuf text dump.
    assert record.video_id == "02aa"
    assert record.labels.tolist() == [3, 4, 9, 34]
    assert record.rgb[0, :2].tolist() == [np.float32(-0.78162539), np.float32(0.104962826)]
    assert record.audio[0, 0] == np.float32(0.92671448)


def test_frame_level_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    videos = [
        ("aaaa", [1, 5], *random_video(rng, 3)),
        ("bbbb", [], *random_video(rng, 1)),
        ("cccc", None, *random_video(rng, 7)),  # no labels key at all
    ]
    path = write_tfrecord(tmp_path / "a.tfrecord", [frame_level_example(*v) for v in videos])
    records = list(read_records(path))
    assert detect_format(path) == SourceFormat("frame", "2018", 3862)
    assert [r.video_id for r in records] == ["aaaa", "bbbb", "cccc"]
    assert [r.labels.tolist() for r in records] == [[1, 5], [], []]
    for record, (_, _, rgb, audio) in zip(records, videos):
        assert record.rgb.dtype == np.uint8 and np.array_equal(record.rgb, rgb)
        assert record.audio.dtype == np.uint8 and np.array_equal(record.audio, audio)


def test_2017_and_2019_records(tmp_path):
    rng = np.random.default_rng(1)
    old_record = frame_level_example("x1", [4715], *random_video(rng, 2), id_key="video_id")
    old = write_tfrecord(tmp_path / "2017.tfrecord", [old_record])
    assert detect_format(old) == SourceFormat("frame", "2017", 4716)
    assert next(read_records(old)).labels.tolist() == [4715]
    rgb, audio = random_video(rng, 4)
    new = write_tfrecord(tmp_path / "2019.tfrecord", [frame_level_example("y2", [3], rgb, audio, segment_fields=True)])
    record = next(read_records(new))
    assert (record.video_id, record.labels.tolist()) == ("y2", [3]) and np.array_equal(record.rgb, rgb)
    video_record = video_level_example("v1", [2], np.ones(1024), np.zeros(128), id_key="video_id")
    video = write_tfrecord(tmp_path / "v.tfrecord", [video_record])
    assert detect_format(video) == SourceFormat("video", "2017", 4716)


def test_field_order_does_not_matter(tmp_path):
    """Protobuf allows fields in any order: feature_lists (field 2) may precede the context (field 1)."""
    rng = np.random.default_rng(2)
    rgb, audio = random_video(rng, 3)
    message = example_pb2.SequenceExample.FromString(frame_level_example("zz", [1], rgb, audio))
    lists_only = example_pb2.SequenceExample(feature_lists=message.feature_lists).SerializeToString()
    context_only = example_pb2.SequenceExample(context=message.context).SerializeToString()
    path = write_tfrecord(tmp_path / "o.tfrecord", [lists_only + context_only])
    record = next(read_records(path))
    assert record.video_id == "zz" and np.array_equal(record.rgb, rgb) and np.array_equal(record.audio, audio)


def _good(i: int) -> bytes:
    rgb, audio = random_video(np.random.default_rng(i), 2)
    return frame_level_example(f"g{i:03d}", [i], rgb, audio)


def _rgb_audio(n_rgb: int = 2, n_audio: int = 2, rgb_dim: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n_rgb, rgb_dim), np.uint8), np.zeros((n_audio, 128), np.uint8)


def _without(key: str) -> bytes:
    message = example_pb2.SequenceExample.FromString(frame_level_example("nokey", [1], *_rgb_audio()))
    del message.feature_lists.feature_list[key]
    return message.SerializeToString()


BAD_RECORDS = {
    "random bytes": (b"\xff\xfe not a protobuf \x07\x00", "not a"),
    "example without id": (example_pb2.SequenceExample().SerializeToString(), "'id'"),
    "missing rgb": (_without("rgb"), "'rgb'"),
    "missing audio": (_without("audio"), "'audio'"),
    "frame of wrong size": (frame_level_example("w", [1], *_rgb_audio(rgb_dim=1000)), "frame 0"),
    "rgb/audio count mismatch": (frame_level_example("m", [1], *_rgb_audio(3, 2)), "3 rgb but 2 audio"),
    "label too large": (frame_level_example("l", [3862], *_rgb_audio()), "label 3862"),
    "negative label": (frame_level_example("n", [-1], *_rgb_audio()), "label -1"),
    "no frames": (frame_level_example("e", [1], *_rgb_audio(0, 0)), "no frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_names_file_and_index(tmp_path, case):
    bad, detail = BAD_RECORDS[case]
    path = write_tfrecord(tmp_path / "bad.tfrecord", [_good(0), _good(1), bad, _good(3)])
    with pytest.raises(DataError) as error:
        list(read_records(path))
    message = str(error.value)
    assert str(path) in message and "record 2" in message and detail in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncate_length", "truncate_data", "truncate_crc", "length_crc", "data_crc"])
def test_damaged_file_names_file_and_index(tmp_path, damage):
    path = write_tfrecord(tmp_path / "d.tfrecord", [_good(i) for i in range(4)], corrupt=damage, at=2)
    reader = read_records(path)
    assert [r.video_id for r in (next(reader), next(reader))] == ["g000", "g001"]
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: record 2: .*download it again"):
        next(reader)


def test_crc_check_can_be_skipped(tmp_path):
    path = write_tfrecord(tmp_path / "c.tfrecord", [_good(i) for i in range(3)], corrupt="data_crc", at=1)
    assert [r.video_id for r in read_records(path, verify_crc=False)] == ["g000", "g001", "g002"]


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="missing.tfrecord: cannot read"):
        detect_format(tmp_path / "missing.tfrecord")
    empty = write_tfrecord(tmp_path / "empty.tfrecord", [])
    with pytest.raises(DataError, match="empty.tfrecord: contains no records"):
        detect_format(empty)
    assert list(read_records(empty)) == []


def _with_unknown_fields(serialized: bytes) -> bytes:
    """The record with every rgb frame's ``Feature`` carrying an unknown field: legal, but not canonical."""
    message = example_pb2.SequenceExample.FromString(serialized)
    frames = message.feature_lists.feature_list["rgb"].feature
    unusual = [example_pb2.Feature.FromString(f.SerializeToString() + b"\x78\x00") for f in frames]  # field 15 = 0
    del frames[:]
    frames.extend(unusual)
    return message.SerializeToString()


def test_index_then_frames_give_what_read_records_gives(tmp_path):
    """The converter's two passes: canonical frame blocks come straight from the index's file offsets, others
    (an unusual encoding, video-level records) are parsed again; either way the frames are read_records'."""
    rng = np.random.default_rng(3)
    message = example_pb2.SequenceExample.FromString(frame_level_example("lc", [2], *random_video(rng, 4)))
    lists_first = (
        example_pb2.SequenceExample(feature_lists=message.feature_lists).SerializeToString()
        + example_pb2.SequenceExample(context=message.context).SerializeToString()
    )
    records = [
        frame_level_example("aa", [1], *random_video(rng, 5)),
        lists_first,
        _with_unknown_fields(frame_level_example("uu", [3], *random_video(rng, 3))),
    ]
    frame_path = write_tfrecord(tmp_path / "f.tfrecord", records)
    means = [video_level_example(f"v{i}", [i], rng.normal(size=1024), rng.normal(size=128)) for i in range(3)]
    video_path = write_tfrecord(tmp_path / "v.tfrecord", means)
    for path, canonical in ((frame_path, [True, True, False]), (video_path, [False] * 3)):
        index = index_shard(path, detect_format(path))
        expected = list(read_records(path))
        assert index.video_ids == [r.video_id for r in expected]
        assert index.lengths.tolist() == [r.num_frames for r in expected]
        assert index.label_values.tolist() == [label for r in expected for label in r.labels.tolist()]
        assert (index.blocks[:, 0] >= 0).tolist() == canonical
        frames = list(shard_frames(index))
        assert len(frames) == len(expected)
        for (rgb, audio), record in zip(frames, expected):
            assert rgb.dtype == record.rgb.dtype and np.array_equal(rgb, record.rgb)
            assert np.array_equal(audio, record.audio)


@pytest.mark.parametrize("case", ["random bytes", "label too large", "data_crc", "truncate_data"])
def test_index_rejects_what_read_records_rejects(tmp_path, case):
    if case in BAD_RECORDS:
        path = write_tfrecord(tmp_path / "bad.tfrecord", [_good(0), _good(1), BAD_RECORDS[case][0], _good(3)])
    else:
        path = write_tfrecord(tmp_path / "bad.tfrecord", [_good(i) for i in range(4)], corrupt=case, at=2)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: record 2: "):
        index_shard(path, SourceFormat("frame", "2018", 3862))


def test_frames_of_a_shard_changed_since_indexing_are_refused(tmp_path):
    path = write_tfrecord(tmp_path / "c.tfrecord", [_good(i) for i in range(2)])
    index = index_shard(path, detect_format(path))
    write_tfrecord(path, [_good(i) for i in range(3)])
    with pytest.raises(DataError, match="c.tfrecord: changed while it was being converted"):
        next(shard_frames(index))
