"""Write YouTube-8M TFRecords for tests, independently of the code under test.

Records are built with the compiled ``tf.Example`` / ``tf.SequenceExample`` messages of the ``tfrecord``
package and framed by hand with ``struct`` + ``crc32c``, so a reader bug cannot hide behind a writer that
shares its code. ``framed_payloads`` is the matching reference reader (framing only), and ``SHARED`` /
``needs_real_shards`` locate the real shards in ``../shared``. ``write_tfrecord`` can also damage a file in
the ways real downloads get damaged.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import crc32c
import numpy as np
import pytest
from tfrecord import example_pb2

# The two real 2018 video-level shards shipped beside the project (see shared/README.md).
SHARED = Path(__file__).parents[1] / ".." / "shared" / "data" / "yt8m_2018_video_level"
needs_real_shards = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real YouTube-8M shards not found at {SHARED} (shared/ folder absent)"
)


def framed_payloads(path: Path) -> list[bytes]:
    """Split a TFRecord file by its length fields alone (no CRC check): an independent reference."""
    data, pos, payloads = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        payloads.append(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
    return payloads


CORRUPTIONS = ("truncate_length", "truncate_data", "truncate_crc", "length_crc", "data_crc")


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record with its TFRecord framing: length, masked CRC of the length, data, masked CRC of data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def frame_level_example(
    video_id: str,
    labels: Sequence[int] | None,
    rgb: np.ndarray,
    audio: np.ndarray,
    *,
    id_key: str = "id",
    segment_fields: bool = False,
) -> bytes:
    """A serialized frame-level ``SequenceExample``.

    Args:
        video_id: the id, stored under ``id_key`` ("id" from 2018 on, "video_id" in 2017).
        labels: class ids; ``None`` leaves out the ``labels`` key (as some test splits do).
        rgb: (n, 1024) uint8, one bytes value per frame. Other shapes are written as given (bad-input tests).
        audio: (n, 128) uint8.
        segment_fields: add the 2019 validate/test context keys ``segment_labels``, ``segment_start_times``
            and ``segment_scores``.
    """
    example = example_pb2.SequenceExample()
    context = example.context.feature
    context[id_key].bytes_list.value.append(video_id.encode())
    if labels is not None:
        context["labels"].int64_list.value.extend(int(label) for label in labels)
    if segment_fields:
        context["segment_labels"].int64_list.value.extend([7, 7])
        context["segment_start_times"].int64_list.value.extend([0, 5])
        context["segment_scores"].float_list.value.extend([1.0, 0.0])
    for key, frames in (("rgb", rgb), ("audio", audio)):
        feature_list = example.feature_lists.feature_list[key]
        for row in frames:
            feature_list.feature.add().bytes_list.value.append(np.asarray(row).tobytes())
    return example.SerializeToString()


def video_level_example(
    video_id: str,
    labels: Sequence[int],
    mean_rgb: np.ndarray,
    mean_audio: np.ndarray,
    *,
    id_key: str = "id",
) -> bytes:
    """A serialized video-level ``Example`` with ``mean_rgb`` (1024 floats) and ``mean_audio`` (128)."""
    example = example_pb2.Example()
    feature = example.features.feature
    feature[id_key].bytes_list.value.append(video_id.encode())
    feature["labels"].int64_list.value.extend(int(label) for label in labels)
    feature["mean_rgb"].float_list.value.extend(np.asarray(mean_rgb, np.float32).tolist())
    feature["mean_audio"].float_list.value.extend(np.asarray(mean_audio, np.float32).tolist())
    return example.SerializeToString()


def write_tfrecord(
    path: str | Path, records: Sequence[bytes], corrupt: str | None = None, at: int = -1
) -> Path:
    """Write serialized records with TFRecord framing, optionally damaging record ``at``.

    Args:
        path: file to write.
        records: serialized messages (or any bytes: a "record" need not be a valid example).
        corrupt: one of ``CORRUPTIONS``; truncations cut the file inside record ``at``'s length, data or data
            CRC (dropping the records after it), the CRC corruptions flip one bit of that record's stored CRC.
        at: index of the record to damage.
    """
    framed = [bytearray(frame(data)) for data in records]
    if corrupt is not None:
        target = framed[at]
        data_end = len(target) - 4
        if corrupt == "length_crc":
            target[8] ^= 1
        elif corrupt == "data_crc":
            target[data_end] ^= 1
        elif corrupt == "truncate_length":
            del target[5:]
        elif corrupt == "truncate_data":
            del target[12 + (data_end - 12) // 2 :]
        elif corrupt == "truncate_crc":
            del target[data_end + 2 :]
        else:
            raise ValueError(f"unknown corruption {corrupt!r}; choose from {CORRUPTIONS}")
        if corrupt.startswith("truncate"):
            framed = framed[: at % len(framed) + 1]
    path = Path(path)
    path.write_bytes(b"".join(framed))
    return path


def random_video(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Random quantised (rgb, audio) frames: (n, 1024) and (n, 128) uint8."""
    return (
        rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8),
        rng.integers(0, 256, (num_frames, 128), dtype=np.uint8),
    )
