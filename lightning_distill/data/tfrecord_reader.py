"""Read YouTube-8M TFRecord shards (frame- and video-level, 2017/2018/2019) without TensorFlow.

A shard is a sequence of records framed as: uint64 LE length, uint32 LE masked CRC32C of those 8 bytes, the
data, uint32 LE masked CRC32C of the data (masked = rotate right 15 bits, + 0xa282ead8). Both CRCs are checked
by default: a bit flipped during a 1.5 TB download would otherwise train silently on garbage.

Frame-level records are ``tf.SequenceExample``s whose ``rgb`` / ``audio`` feature lists hold one 1024- or
128-byte value per second. Parsing them with protobuf builds ~2 messages per frame, which caps a core at about
0.5 GB/s, so the reader walks the few top-level fields by hand, hands the small context to protobuf (upb), and
reads each feature list as one numpy view: in the canonical encoding every frame is the same fixed header then
its bytes, so an (n, header + dim) array whose header columns all match is exactly the list of n frames. Any
other (legal but unusual) encoding falls back to protobuf, which also reports a frame of the wrong size.

A converter that must size its output before copying (see ``convert``) indexes a shard first: ``index_shard``
checks everything ``read_records`` checks (CRCs included) and notes where each record's frame blocks lie in the
file; ``shard_frames`` then yields the frames from those offsets with no CRC, parsing or validation work.

The format is detected from a shard's first record, never asked of the user: a ``SequenceExample`` with
``rgb``/``audio`` lists is frame-level, an ``Example`` with ``mean_rgb`` is video-level; the id key says the
version (``video_id``: 2017, 4716 classes; ``id``: 2018 and 2019, 3862 classes). 2019 validate/test records
carry extra segment keys in their context; they are ignored.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import crc32c
import numpy as np
from google.protobuf.message import DecodeError

from lightning_distill.data import example_proto
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.data.yt8m import AUDIO_DIM, ID_KEYS, NUM_CLASSES, RGB_DIM, declared_vocabulary
from lightning_distill.errors import DataError

LEVELS = ("frame", "video")
_CRC_MASK_DELTA = 0xA282EAD8
_FRAME_LISTS = {"rgb": RGB_DIM, "audio": AUDIO_DIM}
_MEANS = {"mean_rgb": RGB_DIM, "mean_audio": AUDIO_DIM}
_REDOWNLOAD = "the shard is damaged or incomplete: download it again"


@dataclass(frozen=True)
class SourceFormat:
    """What a shard holds, as detected from its first record.

    Attributes:
        level: "frame" (one feature vector per second) or "video" (``mean_rgb`` / ``mean_audio``).
        version: "2017" (id key ``video_id``) or "2018" (id key ``id``; also 2019's records).
        num_classes: label vocabulary size; labels at or above it are rejected.
    """

    level: str
    version: str
    num_classes: int

    @property
    def id_key(self) -> str:
        return ID_KEYS[self.version]


class _BadRecord(Exception):
    """A record-level problem; ``read_records`` adds the file and record index to make it a DataError."""


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def iter_payloads(path: str | Path, *, verify_crc: bool = True) -> Iterator[tuple[int, memoryview]]:
    """Yield (file offset, data) of every record of a TFRecord file, in file order, checking both CRCs.

    The file is memory-mapped, so a shard of any size costs no more memory than the records in use; the
    yielded views stay valid as long as they (or arrays made from them) are referenced.

    Raises:
        DataError: the file is missing, truncated, or a CRC does not match (naming file and record index).
    """
    path = Path(path)
    buffer = _map(path)
    view, size = memoryview(buffer), len(buffer)
    pos, index = 0, 0
    while pos < size:
        if size - pos < 12:
            raise DataError(f"{path}: record {index}: file ends inside the record's length; {_REDOWNLOAD}")
        length, length_crc = struct.unpack_from("<QI", buffer, pos)
        if verify_crc and masked_crc32c(view[pos : pos + 8]) != length_crc:
            raise DataError(f"{path}: record {index}: length CRC mismatch; {_REDOWNLOAD}")
        start = pos + 12
        end = start + length
        if end + 4 > size:
            raise DataError(f"{path}: record {index}: file ends inside the record's data or CRC; {_REDOWNLOAD}")
        data = view[start:end]
        if verify_crc and masked_crc32c(data) != struct.unpack_from("<I", buffer, end)[0]:
            raise DataError(f"{path}: record {index}: data CRC mismatch; {_REDOWNLOAD}")
        yield start, data
        pos = end + 4
        index += 1


def detect_format(path: str | Path, *, verify_crc: bool = True) -> SourceFormat:
    """Detect level and version of a shard from its first record.

    Raises:
        DataError: the file is empty, unreadable, or its first record is not a YouTube-8M example.
    """
    found = sniff_format(path, verify_crc=verify_crc)
    if found is None:
        raise DataError(f"{path}: contains no records; pass a non-empty YouTube-8M TFRecord shard")
    return found


def sniff_format(path: str | Path, *, verify_crc: bool = True) -> SourceFormat | None:
    """Like ``detect_format``, but ``None`` for a shard without records (legal, if useless).

    The class count is the version's, unless the shard's folder declares its own (``yt8m.VOCABULARY_FILE``, as
    ``vdistill synth`` writes), so a hand conversion and the data module agree without being told.
    """
    for _, data in iter_payloads(path, verify_crc=verify_crc):
        try:
            found = _format_of(data)
        except _BadRecord as err:
            raise DataError(f"{path}: record 0: {err}") from None
        declared = declared_vocabulary(Path(path))
        return found if declared is None else replace(found, num_classes=declared)
    return None


def read_records(
    path: str | Path, *, verify_crc: bool = True, source_format: SourceFormat | None = None
) -> Iterator[VideoRecord]:
    """Yield the videos of one shard in file order.

    Frame-level records give (n, 1024) / (n, 128) uint8 arrays (read-only views of the mapped file, all
    frames, untruncated); video-level records give (1, 1024) / (1, 128) float32 means.

    Args:
        path: a TFRecord shard.
        verify_crc: check both CRCs of every record.
        source_format: the format every record must have (e.g. to check a shard against its siblings, or to
            widen ``num_classes``); default: detected from the first record.

    Raises:
        DataError: naming the file and record index, for a damaged file or a record that is not a well-formed
            YouTube-8M example of ``source_format`` (missing keys, wrong frame sizes, rgb/audio frame counts
            that differ, no frames, a label outside [0, num_classes)).
    """
    for _, _, record, _ in _parsed_records(path, verify_crc, source_format):
        yield record


@dataclass(frozen=True)
class ShardIndex:
    """The videos of one shard, fully checked and located by ``index_shard``; small and picklable.

    Attributes:
        path: the shard.
        source_format: the format every record was checked against.
        stat: (size, mtime_ns) of the file when indexed; ``shard_frames`` refuses a file changed since.
        video_ids: N ids.
        lengths: (N,) int64 frames per video, all of them (1 for video-level records).
        label_counts: (N,) int64 labels per video.
        label_values: (L,) int64 all labels, video after video.
        records: (N, 2) int64 byte range of each record's data in the file.
        blocks: (N, 2) int64 file offsets of each record's canonically encoded rgb and audio frame blocks; -1
            where the record is parsed again instead (video-level records, unusual encodings).
    """

    path: Path
    source_format: SourceFormat
    stat: tuple[int, int]
    video_ids: list[str]
    lengths: np.ndarray
    label_counts: np.ndarray
    label_values: np.ndarray
    records: np.ndarray
    blocks: np.ndarray

    def __len__(self) -> int:
        return len(self.video_ids)


def index_shard(path: str | Path, source_format: SourceFormat, *, verify_crc: bool = True) -> ShardIndex:
    """Check every record of a shard as ``read_records`` does and note where its frames are.

    Raises:
        DataError: as ``read_records``, for the first bad record.
    """
    path = Path(path)
    stat = _stat(path)
    ids: list[str] = []
    lengths: list[int] = []
    labels: list[np.ndarray] = [np.empty(0, np.int64)]
    records: list[tuple[int, int]] = []
    blocks: list[tuple[int, int]] = []
    for start, data, record, found in _parsed_records(path, verify_crc, source_format):
        ids.append(record.video_id)
        lengths.append(record.num_frames)
        labels.append(record.labels)
        records.append((start, start + len(data)))
        blocks.append((start + found[0], start + found[1]) if found else (-1, -1))
    return ShardIndex(
        path,
        source_format,
        stat,
        ids,
        np.array(lengths, np.int64),
        np.array([len(x) for x in labels[1:]], np.int64),
        np.concatenate(labels),
        np.array(records, np.int64).reshape(-1, 2),
        np.array(blocks, np.int64).reshape(-1, 2),
    )


def shard_frames(index: ShardIndex) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rgb, audio) of every video of an indexed shard, in file order, as ``read_records`` gives them.

    Canonical frame blocks become views of the mapped file straight from the index's offsets: the index
    already checked their CRCs and structure. Other records are parsed again.

    Raises:
        DataError: the file changed since it was indexed.
    """
    path = index.path
    if _stat(path) != index.stat:
        raise DataError(f"{path}: changed while it was being converted; run the conversion again")
    buffer = _map(path)
    view = memoryview(buffer)
    rows = zip(index.lengths.tolist(), index.records.tolist(), index.blocks.tolist())
    for count, (start, stop), (rgb_at, audio_at) in rows:
        if rgb_at < 0:
            record, _ = _parse(view[start:stop], index.source_format)
            yield record.rgb, record.audio
        else:
            yield _frame_block(buffer, rgb_at, count, RGB_DIM), _frame_block(buffer, audio_at, count, AUDIO_DIM)


def _map(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped (mmap keeps its own handle, so the file is closed at once)."""
    try:
        with open(path, "rb") as f:
            # An empty file cannot be mapped.
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    except OSError as err:
        raise DataError(f"{path}: cannot read TFRecord file ({err.strerror}); check the path") from None


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(f"{path}: cannot read TFRecord file ({err.strerror}); check the path") from None
    return stat.st_size, stat.st_mtime_ns


def _parsed_records(
    path: str | Path, verify_crc: bool, source_format: SourceFormat | None
) -> Iterator[tuple[int, memoryview, VideoRecord, tuple[int, int] | None]]:
    """(file offset, data, record, canonical block offsets within data) of every record, checked."""
    expected = source_format or sniff_format(path, verify_crc=verify_crc)
    for index, (start, data) in enumerate(iter_payloads(path, verify_crc=verify_crc)):
        try:
            record, blocks = _parse(data, expected)
        except _BadRecord as err:
            raise DataError(f"{path}: record {index}: {err}") from None
        yield start, data, record, blocks


def _parse(data: memoryview, source_format: SourceFormat) -> tuple[VideoRecord, tuple[int, int] | None]:
    """A record of ``source_format`` and, when both are canonically encoded, where its rgb and audio frame
    blocks start in ``data`` (``_BadRecord`` if it is not a well-formed record of that format)."""
    if source_format.level == "frame":
        record, blocks = _frame_level(data, source_format.id_key)
    else:
        record, blocks = _video_level(data, source_format.id_key), None
    _check_labels(record.labels, source_format.num_classes)
    return record, blocks


def _format_of(data: memoryview) -> SourceFormat:
    """The format one record has (``_BadRecord`` if it is not a YouTube-8M example)."""
    context, lists = _split_sequence_example(data)
    feature = context.feature
    version = next((v for v, key in ID_KEYS.items() if key in feature), None)
    if version is None:
        raise _BadRecord("no 'id' or 'video_id' key: not a YouTube-8M record")
    if any(name in lists for name in _FRAME_LISTS):
        level = "frame"
    elif all(name in feature for name in _MEANS):
        level = "video"
    else:
        raise _BadRecord("neither 'rgb'/'audio' frame lists nor 'mean_rgb'/'mean_audio': not a YouTube-8M record")
    return SourceFormat(level, version, NUM_CLASSES[version])


def _frame_level(data: memoryview, id_key: str) -> tuple[VideoRecord, tuple[int, int] | None]:
    context, lists = _split_sequence_example(data)
    video_id, labels = _id_and_labels(context, id_key)
    frames: dict[str, np.ndarray] = {}
    blocks: list[int] = []
    for name, dim in _FRAME_LISTS.items():
        if name not in lists:
            raise _BadRecord(f"no '{name}' feature list: a frame-level record needs both 'rgb' and 'audio'")
        start, stop = lists[name]
        canonical = _canonical_frames(data[start:stop], dim)
        if canonical is None:
            frames[name] = _decoded_frames(data[start:stop], name, dim)
        else:
            frames[name] = canonical
            blocks.append(start)
    rgb, audio = frames["rgb"], frames["audio"]
    if len(rgb) != len(audio):
        raise _BadRecord(f"video {video_id!r} has {len(rgb)} rgb but {len(audio)} audio frames; they must match")
    if len(rgb) == 0:
        raise _BadRecord(f"video {video_id!r} has no frames; remove it from the shard")
    return VideoRecord(video_id, labels, rgb, audio), (blocks[0], blocks[1]) if len(blocks) == 2 else None


def _video_level(data: memoryview, id_key: str) -> VideoRecord:
    try:
        features = example_proto.Example.FromString(data).features
    except DecodeError:
        raise _BadRecord("not a protobuf message: not a YouTube-8M record") from None
    video_id, labels = _id_and_labels(features, id_key)
    means = {}
    for name, dim in _MEANS.items():
        values = features.feature[name].float_list.value if name in features.feature else ()
        if len(values) != dim:
            raise _BadRecord(f"'{name}' holds {len(values)} floats, expected {dim}: not a video-level record")
        means[name] = np.array(values, np.float32).reshape(1, dim)
        if not np.isfinite(means[name]).all():
            raise _BadRecord(
                f"video {video_id!r}: '{name}' holds NaN or infinite values; the record is damaged: remove it "
                "or regenerate its features"
            )
    return VideoRecord(video_id, labels, means["mean_rgb"], means["mean_audio"])


def _id_and_labels(context: example_proto.Features, id_key: str) -> tuple[str, np.ndarray]:
    """The video id (one utf-8 bytes value) and labels (int64, empty when the key is absent)."""
    feature = context.feature
    if id_key not in feature:
        raise _BadRecord(f"no '{id_key}' key: not a YouTube-8M record of the shard set's version")
    ids = feature[id_key].bytes_list.value
    if len(ids) != 1:
        raise _BadRecord(f"'{id_key}' holds {len(ids)} values; a YouTube-8M record has exactly one")
    try:
        video_id = ids[0].decode()
    except UnicodeDecodeError:
        raise _BadRecord(f"'{id_key}' is not utf-8 text: not a YouTube-8M record") from None
    labels = np.array(feature["labels"].int64_list.value, np.int64) if "labels" in feature else np.empty(0, np.int64)
    return video_id, labels


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise _BadRecord(
            f"label {bad} is outside [0, {num_classes}); pass num_classes matching the data's label vocabulary"
        )


def _split_sequence_example(data: memoryview) -> tuple[example_proto.Features, dict[str, tuple[int, int]]]:
    """Parse a ``SequenceExample``'s context with protobuf and locate its feature lists' encoded bytes.

    SequenceExample: context = field 1 (Features), feature_lists = field 2 (FeatureLists: repeated field 1 map
    entries {key = 1: string, value = 2: FeatureList}). Repeated occurrences of a message field merge, so the
    context is parsed from the concatenation of its pieces, and a later map entry replaces an earlier one.

    Returns:
        The context, and each feature list's byte range in ``data``.
    """
    context_parts: list[memoryview] = []
    lists: dict[str, tuple[int, int]] = {}
    try:
        for field, start, stop in _length_delimited_fields(data, 0, len(data)):
            if field == 1:
                context_parts.append(data[start:stop])
            elif field == 2:
                for entry_field, entry_start, entry_stop in _length_delimited_fields(data, start, stop):
                    if entry_field == 1:
                        key, payload = _map_entry(data, entry_start, entry_stop)
                        lists[key] = payload
        context = example_proto.Features.FromString(b"".join(context_parts))
    except (DecodeError, ValueError):
        raise _BadRecord("not a protobuf message: not a YouTube-8M record") from None
    return context, lists


def _map_entry(data: memoryview, start: int, stop: int) -> tuple[str, tuple[int, int]]:
    """Key and value byte range of the map entry encoded at ``data[start:stop]``."""
    key, payload = b"", (stop, stop)
    for field, value_start, value_stop in _length_delimited_fields(data, start, stop):
        if field == 1:
            key = bytes(data[value_start:value_stop])
        elif field == 2:
            payload = (value_start, value_stop)
    return key.decode(), payload


def _length_delimited_fields(data: memoryview, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """Yield (field number, start, stop) of the length-delimited fields of the message encoded at
    ``data[start:stop]`` (positions in ``data``, so nested fields can be located in the file); skip the others.

    Raises:
        ValueError: the bytes are not a well-formed protobuf message.
    """
    pos = start
    while pos < stop:
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            size, pos = _varint(data, pos)
            if pos + size > stop:
                raise ValueError("field runs past the end of the message")
            yield key >> 3, pos, pos + size
            pos += size
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != stop:
        raise ValueError("field runs past the end of the message")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``; returns (value, position after it)."""
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _canonical_frames(payload: memoryview, dim: int) -> np.ndarray | None:
    """(n, dim) uint8 view of an encoded ``FeatureList`` of n one-value ``BytesList``s of ``dim`` bytes, if it
    is in the canonical encoding (every frame the same fixed header, then its bytes); else None."""
    header = _frame_header(dim)
    step = len(header) + dim
    if len(payload) % step:
        return None
    rows = np.frombuffer(payload, np.uint8).reshape(-1, step)
    return rows[:, len(header) :] if (rows[:, : len(header)] == header).all() else None


def _decoded_frames(payload: memoryview, name: str, dim: int) -> np.ndarray:
    """(n, dim) uint8 frames of any legal encoding of a ``FeatureList``, frame by frame with protobuf (which
    also reports a frame of the wrong size)."""
    try:
        features = example_proto.FeatureList.FromString(payload).feature
    except DecodeError:
        raise _BadRecord(f"the '{name}' feature list is not a protobuf message: not a YouTube-8M record") from None
    values = []
    for index, feature in enumerate(features):
        value = feature.bytes_list.value
        if len(value) != 1 or len(value[0]) != dim:
            sizes = [len(v) for v in value]
            raise _BadRecord(f"'{name}' frame {index} holds byte strings of sizes {sizes}, expected one of {dim}")
        values.append(value[0])
    return np.frombuffer(b"".join(values), np.uint8).reshape(-1, dim)


def _frame_block(buffer: mmap.mmap | bytes, start: int, count: int, dim: int) -> np.ndarray:
    """(count, dim) uint8 view of the canonical frame block found at file offset ``start`` by ``index_shard``."""
    header = len(_frame_header(dim))
    return np.frombuffer(buffer, np.uint8, count * (header + dim), start).reshape(count, -1)[:, header:]


@cache
def _frame_header(dim: int) -> np.ndarray:
    """The bytes before each frame's data in a canonically encoded FeatureList of ``dim``-byte frames.

    Frame = FeatureList.feature (field 1) { Feature.bytes_list (field 1) { BytesList.value (field 1): data } },
    each level a tag byte 0x0a and a varint length.
    """
    bytes_list = 1 + len(_encode_varint(dim)) + dim
    feature = 1 + len(_encode_varint(bytes_list)) + bytes_list
    header = b"\x0a" + _encode_varint(feature) + b"\x0a" + _encode_varint(bytes_list) + b"\x0a" + _encode_varint(dim)
    return np.frombuffer(header, np.uint8)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
