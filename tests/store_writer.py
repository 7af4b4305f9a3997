"""Writing frame stores from in-memory records, for tests and benchmarks (production writes stores with
``convert``): the same layout through ``frame_store.building_frame_store``, with records of unknown total size
spooled to a raw file first and copied in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from lightning_distill.data.frame_store import DTYPES, VideoTable, building_frame_store
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.data.yt8m import FEATURE_DIM, MAX_FRAMES
from lightning_distill.errors import DataError

_COPY_BLOCK = 64 << 20


def write_frame_store(
    path: str | Path,
    records: Iterable[VideoRecord],
    *,
    level: str,
    source_version: str,
    num_classes: int,
    max_frames: int = MAX_FRAMES,
    manifest: dict[str, Any] | None = None,
) -> int:
    """Write records to a new frame store at ``path`` (atomically); returns the number of videos.

    Videos longer than ``max_frames`` keep their first ``max_frames`` frames, as the official readers do.

    Args:
        path: the store to write; its directory must exist. An existing store there is replaced.
        records: videos in store order; uint8 frames for level "frame", (1, D) float32 for level "video".
        level: "frame" or "video".
        source_version: "2017" or "2018".
        num_classes: label vocabulary size.
        max_frames: frames kept per video.
        manifest: JSON-serialisable description of the sources, stored as the ``manifest`` attribute.

    Raises:
        DataError: the directory is missing or a label is outside [0, num_classes).
    """
    path = Path(path)
    if level not in DTYPES:
        raise ValueError(f"level must be one of {sorted(DTYPES)}, got {level!r}")
    if not path.parent.is_dir():
        raise DataError(f"{path}: directory {path.parent} does not exist; create it first")
    fd, spool_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".frames", dir=path.parent)
    os.close(fd)
    spool = Path(spool_name)
    try:
        table, checksums = _spool(records, spool, level=level, num_classes=num_classes, max_frames=max_frames)
        options = dict(level=level, source_version=source_version, num_classes=num_classes, max_frames=max_frames)
        with building_frame_store(path, table, **options, manifest=manifest) as slots:
            if slots.offset is not None:
                _copy_file(spool, slots.path, slots.offset)
            slots.write_checksums(0, checksums)
        return len(table.video_ids)
    finally:
        spool.unlink(missing_ok=True)


def _spool(
    records: Iterable[VideoRecord], frames_path: Path, *, level: str, num_classes: int, max_frames: int
) -> tuple[VideoTable, np.ndarray]:
    """Append records' frames (first ``max_frames`` of each, in the store's row layout) to a raw file; returns
    their table and (N,) uint32 checksums.

    Raises:
        DataError: a label is outside [0, num_classes).
    """
    dtype = DTYPES[level]
    ids: list[str] = []
    lengths: list[int] = []
    labels: list[np.ndarray] = []
    checksums: list[int] = []
    with open(frames_path, "wb") as out:
        for record in records:
            kept = min(record.num_frames, max_frames)
            if record.rgb.dtype != dtype or record.audio.shape[0] != record.rgb.shape[0]:
                raise ValueError(
                    f"video {record.video_id!r}: a {level}-level store needs {dtype} rgb and audio of equal length"
                )
            record_labels = np.asarray(record.labels, np.int64)
            if record_labels.size and (record_labels.min() < 0 or record_labels.max() >= num_classes):
                raise DataError(
                    f"video {len(ids)} ({record.video_id!r}): a label is outside [0, {num_classes}); "
                    "pass num_classes matching the data's label vocabulary"
                )
            rows = np.empty((kept, FEATURE_DIM), dtype)
            rows[:] = np.concatenate([record.rgb[:kept], record.audio[:kept]], axis=1)
            out.write(rows)
            checksums.append(crc32c.crc32c(rows))
            ids.append(record.video_id)
            lengths.append(kept)
            labels.append(record_labels)
    table = VideoTable(
        ids,
        np.array(lengths, np.int64),
        np.array([len(x) for x in labels], np.int64),
        np.concatenate(labels).astype(np.int32) if labels else np.empty(0, np.int32),
    )
    return table, np.array(checksums, np.uint32)




def _copy_file(source: Path, path: Path, offset: int) -> None:
    """Copy all of ``source`` into ``path`` at byte ``offset``.

    ``os.copy_file_range`` copies inside the kernel (and shares blocks on file systems with reflinks), about
    4x faster than reading and writing through Python; other systems take the portable route.
    """
    size = source.stat().st_size
    with open(source, "rb") as src, open(path, "rb+") as out:
        if hasattr(os, "copy_file_range"):
            done = 0
            while done < size:
                done += os.copy_file_range(src.fileno(), out.fileno(), size - done, done, offset + done)
        else:
            out.seek(offset)
            shutil.copyfileobj(src, out, _COPY_BLOCK)
