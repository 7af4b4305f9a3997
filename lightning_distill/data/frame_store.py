"""The HDF5 frame store: one split of YouTube-8M in a layout that lets a training step read just its frames.

Layout (format "vdistill-frame-store/2"; any HDF5 tool can read it):

* ``frames`` (F, 1152): every frame of every video, rgb (1024) then audio (128), videos back to back in
  order. uint8 quantised values for frame-level sources (NOT dequantised: a quarter of the size, and the
  data module dequantises on the device), float32 for video-level sources (one "frame" per video: the
  ``mean_rgb`` / ``mean_audio`` pair). Contiguous, no chunking, no compression.
* ``offsets`` (N+1,) int64: video i's frames are ``frames[offsets[i]:offsets[i+1]]`` (CSR).
* ``video_ids`` (N,) variable-length utf-8 strings.
* ``label_offsets`` (N+1,) int64 and ``label_values`` (L,) int32: video i's labels are
  ``label_values[label_offsets[i]:label_offsets[i+1]]`` (possibly empty).
* ``checksums`` (N,) uint32: CRC32C of each video's rows of ``frames`` (its bytes as stored), so damage inside
  a store (a zeroed block, a flipped bit) is found by ``FrameStore.verify`` (``vdistill inspect --verify``) rather
  than trained on. Absent in format 1 stores, which are still read.
* attributes: ``format`` = "vdistill-frame-store/2" (written last: a file without it is not a finished
  store), ``level`` ("frame" / "video"), ``source_version`` ("2017" / "2018"), ``num_classes``,
  ``max_frames`` (frames kept per video; longer videos keep their first ``max_frames``; 1 for video-level),
  ``manifest`` (JSON: the source files and options that produced the store; ``{}`` if not given).

Why contiguous: a batch is a gather of scattered rows. The uint8 ``frames`` dataset's bytes sit at one file
offset, so the store memory-maps them: a teacher view copies one row range per video, a student view is one
numpy ``take`` (page-cache speed, no HDF5 call per row). A chunked layout forces every read through HDF5's
chunk cache. Measured with ``python benchmarks/convert.py`` (800 videos of 80-240 frames, batch 256, a
2-core machine under load): teacher view 20 ms per batch (12.8k videos/s) from the memory map vs 2.7 s
through h5py fancy indexing of a (64, 1152)-chunked copy; student view (k=30) 1.5 ms (170k videos/s) vs
0.65 s. Chunked or compressed stores written by other tools are still read, through h5py.

Stores are written atomically (``building_frame_store``): a temporary file beside the store is created with
every table and the ``frames`` and ``checksums`` datasets allocated (disk blocks reserved, bytes unwritten), the
caller writes the frames and their checksums into it in place (``convert``, which sizes the store in a first
pass over its shards), and the file is marked finished, fsynced and renamed over the store.

Why fsync before the rename, when the rename alone is atomic for every other process: after a power loss or
kernel crash, a renamed but unsynced store may come back with its name, metadata and manifest but zeroed
frames: ``convert`` would then find it up to date and a trainer would read zeros without complaint. The fsync
costs what the disk needs to take the bytes, once per store: about 0.05 s per 128 MB of frames on the
development machine, 20-25% of a single-worker ``convert`` of page-cached shards.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import crc32c
import h5py
import numpy as np

from lightning_distill.atomic_files import replacing
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.data.yt8m import FEATURE_DIM, RGB_DIM
from lightning_distill.errors import DataError

FORMAT = "vdistill-frame-store/2"
# Format 1 is format 2 without ``checksums``.
READABLE_FORMATS = ("vdistill-frame-store/1", FORMAT)
DTYPES = {"frame": np.dtype(np.uint8), "video": np.dtype(np.float32)}
_WRITE_BLOCK = 4 << 20
# Scattered rows' pages at most this many pages apart are asked for as one run, the gap included: a disk reads a
# few KiB more in the same request about as fast, and one call per run is cheaper than one per frame.
_ASK_GAP_PAGES = 4


class FrameStore:
    """Read access to one split's frame store; picklable, and safe in forked or spawned DataLoader workers.

    Only the path travels when pickled; each process opens the file (and memory map) itself on first read.

    Args:
        path: a store written by ``convert`` (or any writer of this layout).

    Raises:
        DataError: the path is missing, not HDF5, or not a finished frame store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._open_h5() as f:
            attrs = f.attrs
            self.format: str = str(attrs["format"])
            self.level: str = str(attrs["level"])
            self.source_version: str = str(attrs["source_version"])
            self.num_classes: int = int(attrs["num_classes"])
            self.max_frames: int = int(attrs["max_frames"])
            self.manifest: dict[str, Any] = json.loads(attrs["manifest"])
            self._offsets = f["offsets"][:].astype(np.int64)
            self._label_offsets = f["label_offsets"][:].astype(np.int64)
            self._label_values = f["label_values"][:].astype(np.int64)
            self.checksums: np.ndarray | None = f["checksums"][:] if "checksums" in f else None
        self.lengths: np.ndarray = np.diff(self._offsets)
        self.dtype = DTYPES[self.level]
        self._reader: _FrameReader | None = None
        self._apart: list[RowSource] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "apart": self._apart}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])
        self._apart = state["apart"]

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def video_ids(self) -> list[str]:
        """The N video ids, in store order (read on first use: millions of strings cost seconds)."""
        with h5py.File(self.path, "r") as f:
            return list(f["video_ids"].asstr()[:])

    def __getitem__(self, index: int) -> VideoRecord:
        """Video ``index`` (negative counts from the end) with its frames split into rgb and audio."""
        i = self._index(index)
        rows = self.rows(int(self._offsets[i]), int(self._offsets[i + 1]))
        return VideoRecord(self.video_ids[i], self.labels(i), rows[:, :RGB_DIM], rows[:, RGB_DIM:])

    @property
    def label_counts(self) -> np.ndarray:
        """(N,) int64 number of labels of every video (0 for unlabelled ones), from the CSR offsets."""
        return np.diff(self._label_offsets)

    def labels(self, index: int) -> np.ndarray:
        """(L,) int64 class ids of video ``index``, possibly empty."""
        i = self._index(index)
        return self._label_values[self._label_offsets[i] : self._label_offsets[i + 1]].copy()

    def multi_hot(self, videos: np.ndarray) -> np.ndarray:
        """(B, C) float32 ground truth of the B videos ``videos`` (int64 indices)."""
        videos = self._indices(videos)
        starts, ends = self._label_offsets[videos], self._label_offsets[videos + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(videos)), counts)
        # Position of each label among all selected ones, shifted to its video's slice of label_values.
        positions = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        out = np.zeros((len(videos), self.num_classes), np.float32)
        out[rows, self._label_values[positions]] = 1.0
        return out

    def read_frames(self, videos: np.ndarray, frames: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
        """Gather frames of several videos in one read.

        Args:
            videos: (B,) int64 video indices.
            frames: (B, T) int64 frame indices within each video; -1 marks a padding slot.
            columns: the features of each frame to read (default all 1152; ``slice(RGB_DIM, None)``: the audio).

        Returns:
            (B, T, F) array in the store's dtype (uint8 or float32), F the columns' width, exactly zero at padding
            slots.

        Raises:
            IndexError: a video index or a frame index beyond its video's length.
        """
        videos = self._indices(videos)
        frames = np.asarray(frames, np.int64)
        if frames.ndim != 2 or len(frames) != len(videos):
            raise ValueError(f"frames must be (B, T) with B = {len(videos)}, got shape {frames.shape}")
        padding = frames < 0
        if (frames >= self.lengths[videos, None]).any() or (frames < -1).any():
            raise IndexError("a frame index is beyond its video's length (or below -1, the padding marker)")
        width = len(range(FEATURE_DIM)[columns])
        if padding.all():
            return np.zeros((*frames.shape, width), self.dtype)
        reader, columns = self._source(columns)
        starts = self._offsets[videos] + frames[:, 0]
        counts = (~padding).sum(axis=1)
        if _consecutive_runs(frames, padding):
            # The teacher view: each video's frames are one range of rows, so copy ranges (memcpy speed);
            # zeros() gets pre-zeroed pages, so padding costs nothing.
            out = np.zeros((*frames.shape, width), self.dtype)
            for row, start, count in zip(out, starts.tolist(), counts.tolist()):
                if count:
                    row[:count] = reader.rows(start, start + count, columns)
            return out
        # Scattered frames (student views): one gather; padding slots read row 0 and are zeroed after.
        rows = np.where(padding, 0, self._offsets[videos, None] + frames)
        out = reader.gather(rows.ravel(), columns).reshape(*frames.shape, width)
        out[padding] = 0
        return out

    def rows(self, start: int, stop: int, columns: slice = slice(None)) -> np.ndarray:
        """A copy of rows [start, stop) of ``frames`` (every video's frames back to back, see the module docstring),
        their ``columns`` only; always read from the store itself."""
        return np.array(self._frames().rows(start, stop, columns))

    def keep_apart(self, source: RowSource) -> bool:
        """Read the columns ``source`` holds from it from now on (a ``ColumnStore`` of this store), not from the
        store, whose rows hold every feature side by side; returns False (and ignores it) when a source of the same
        columns is kept already."""
        if self.keeps_apart(source.columns):
            return False
        self._apart.append(source)
        return True

    def keeps_apart(self, columns: tuple[slice, ...]) -> bool:
        """Whether a source of exactly these columns, in this order, is kept apart already (``keep_apart``)."""
        wanted = [range(FEATURE_DIM)[c] for c in columns]
        return any([range(FEATURE_DIM)[c] for c in kept.columns] == wanted for kept in self._apart)

    def fingerprint(self) -> str:
        """A hash of the store's content: its videos' frame counts and checksums (format 2), else its file's
        size, modification time and manifest (format 1). Equal fingerprints mean equal frames."""
        digest = hashlib.sha256(self._offsets.tobytes())
        if self.checksums is not None:
            digest.update(self.checksums.tobytes())
        else:
            stat = self.path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:{json.dumps(self.manifest, sort_keys=True)}".encode())
        return digest.hexdigest()

    def verify(self, progress: Callable[[int], None] | None = None) -> list[int]:
        """Check every video's frames against its stored CRC32C; returns the indices of the videos that differ.

        Args:
            progress: called with the number of videos checked since its last call.

        Raises:
            DataError: the store has no checksums (format 1: convert it again to add them).
        """
        if self.checksums is None:
            raise DataError(f"{self.path}: {self.format} store without checksums; convert it again to add them")
        reader = self._frames()
        bad = []
        for video, (start, stop) in enumerate(zip(self._offsets[:-1].tolist(), self._offsets[1:].tolist())):
            if crc32c.crc32c(np.ascontiguousarray(reader.rows(start, stop))) != self.checksums[video]:
                bad.append(video)
            if progress is not None and video % 1024 == 1023:
                progress(1024)
        if progress is not None:
            progress(len(self) % 1024)
        return bad

    def _source(self, columns: slice) -> tuple[RowSource | _FrameReader, slice]:
        """Where ``columns`` are read from: a source kept apart that holds them all, with their place in its rows,
        else the store."""
        for source in self._apart:
            inside = source.locate(columns)
            if inside is not None:
                return source, inside
        return self._frames(), columns

    def _frames(self) -> _FrameReader:
        # A handle opened before a fork must not be shared with the child: HDF5 handles are per process.
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _FrameReader(self.path, self.dtype, int(self._offsets[-1]))
        return self._reader

    def _open_h5(self) -> h5py.File:
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such frame store; write it with `vdistill convert` first")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            raise DataError(f"{self.path}: not an HDF5 file; pass a store written by `vdistill convert`") from None
        if f.attrs.get("format") not in READABLE_FORMATS:
            found = f.attrs.get("format")
            f.close()
            raise DataError(
                f"{self.path}: not a finished frame store (format {found!r}, expected {FORMAT!r}); convert it again"
            )
        return f

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"video index {index} out of range for a store of {n} videos")
        return int(index) % n

    def _indices(self, videos: np.ndarray) -> np.ndarray:
        videos = np.asarray(videos, np.int64)
        n = len(self)
        if videos.size and (videos.min() < -n or videos.max() >= n):
            raise IndexError(f"a video index is out of range for a store of {n} videos")
        return videos % max(n, 1)


class RowSource(Protocol):
    """Some ``columns`` of every row of a store's ``frames``, in the store's row order, read like ``_FrameReader``."""

    columns: tuple[slice, ...]

    def locate(self, columns: slice) -> slice | None:
        """Where the store's ``columns`` lie in this source's rows; None if it does not hold them all."""

    def rows(self, start: int, stop: int, columns: slice) -> np.ndarray:
        """Rows [start, stop), their ``columns`` (in this source's numbering)."""

    def gather(self, rows: np.ndarray, columns: slice) -> np.ndarray:
        """A copy of the given rows' ``columns`` (in this source's numbering), any order."""


class _FrameReader:
    """This process's handle on the frames: memory maps when the dataset is contiguous, else h5py.

    Two maps of the same bytes (one page cache). Runs of consecutive rows (teacher views, whole videos) are read
    through one with the kernel's default read-ahead. On a page fault the kernel reads up to 128 KiB around the
    page, so k scattered frames of videos not in the page cache would read most of their pages from disk:
    Uniform-6 frames read the whole store. So scattered rows far apart (k-frame views) are first asked for, exactly
    their pages (``MADV_WILLNEED``, all of a batch's reads going to the disk at once), then read through a map
    advised ``MADV_RANDOM`` (a page not yet read when touched is read alone). ``python benchmarks/skim_io.py``,
    4,000 videos of 30-300 frames, not in the page cache: Uniform-6 reads 23% of the store, and sooner;
    Uniform-30's frames lie close enough to be read as before (see ``_ask_for``). In the page cache, asking costs
    about 2 us per frame.
    """

    def __init__(self, path: Path, dtype: np.dtype, total_frames: int) -> None:
        self.pid = os.getpid()
        self._file = h5py.File(path, "r")
        self._dataset = self._file["frames"]
        self._offset = self._dataset.id.get_offset()
        self._itemsize = dtype.itemsize
        # get_offset() is None for chunked/compressed layouts and for an empty (never allocated) dataset.
        self._memmap = self._scattered = self._scattered_map = None
        if self._offset is not None and total_frames:
            shape = (total_frames, FEATURE_DIM)
            self._memmap = _rows_of(_map(path), dtype, self._offset, shape)
            self._scattered_map = _map(path)
            if hasattr(mmap, "MADV_RANDOM"):
                self._scattered_map.madvise(mmap.MADV_RANDOM)
            self._scattered = _rows_of(self._scattered_map, dtype, self._offset, shape)

    def rows(self, start: int, stop: int, columns: slice = slice(None)) -> np.ndarray:
        """Rows [start, stop) (their ``columns``): a view of the memory map (copy it to keep it), or an array read by
        h5py."""
        if self._memmap is not None:
            return self._memmap[start:stop, columns]
        return self._dataset[start:stop, columns]

    def gather(self, rows: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
        """A (len(rows), F) copy of the given rows' ``columns`` (any order, repeats allowed)."""
        if self._scattered is not None:
            mapped = self._scattered if self._ask_for(rows, columns) else self._memmap
            if columns == slice(None):
                return np.take(mapped, rows, axis=0)
            return mapped[rows, columns]
        if not len(rows):
            return np.zeros((0, len(range(FEATURE_DIM)[columns])), self._dataset.dtype)
        # h5py needs increasing, unique indices.
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._dataset[unique, columns][inverse]

    def _ask_for(self, rows: np.ndarray, columns: slice) -> bool:
        """Have the kernel read the pages that hold these rows' ``columns`` now, in runs (see ``_ASK_GAP_PAGES``), and
        return True; or return False, asking nothing, when the rows lie so close that most share a run with another
        (k = 30 of 300 frames): read-ahead then reads about the same pages, and costs nothing once they are cached,
        where asking costs a lookup per page of every run."""
        kept = range(FEATURE_DIM)[columns]
        if not hasattr(mmap, "MADV_WILLNEED") or not len(rows) or not len(kept):
            return False
        low, high = min(kept[0], kept[-1]), max(kept[0], kept[-1])
        unique = np.unique(rows)
        first = self._offset + (unique * FEATURE_DIM + low) * self._itemsize
        pages = first // mmap.PAGESIZE
        last = (first + (high - low + 1) * self._itemsize - 1) // mmap.PAGESIZE
        # A new run starts at a row whose first page is more than _ASK_GAP_PAGES beyond every earlier row's last.
        reach = np.maximum.accumulate(last)
        starts = np.flatnonzero(np.r_[True, pages[1:] > reach[:-1] + _ASK_GAP_PAGES])
        if 2 * len(starts) < len(unique):
            return False
        ends = np.r_[starts[1:], len(pages)] - 1
        for start, end in zip(pages[starts].tolist(), reach[ends].tolist()):
            self._scattered_map.madvise(mmap.MADV_WILLNEED, start * mmap.PAGESIZE, (end - start + 1) * mmap.PAGESIZE)
        return True


@dataclass
class VideoTable:
    """Everything a store holds besides the frames' bytes: its videos, in order, with their frame counts and labels.

    Attributes:
        video_ids: N ids.
        lengths: (N,) int64 frames kept per video.
        label_counts: (N,) int64 labels per video.
        label_values: (L,) int32 all labels, video after video.
    """

    video_ids: list[str]
    lengths: np.ndarray
    label_counts: np.ndarray
    label_values: np.ndarray


@dataclass(frozen=True)
class FrameSlots:
    """The preallocated ``frames`` and ``checksums`` datasets of a store being built; picklable, so worker
    processes can each fill their own range of rows (and of videos) in place.

    Attributes:
        path: the store's temporary file.
        offset: byte offset of ``frames`` in the file (None when it has no rows: nothing is allocated).
        checksum_offset: byte offset of ``checksums`` (None when the store has no videos).
        dtype: the store's frame dtype.
        rows: F, rows of ``frames``.
    """

    path: Path
    offset: int | None
    checksum_offset: int | None
    dtype: np.dtype
    rows: int

    def fill(
        self, first_row: int, first_video: int, lengths: np.ndarray, videos: Iterable[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Write videos' frames back to back from row ``first_row``, and their checksums from ``first_video``.

        Rows are assembled in a block of a few MB and written with one ``write`` per block: measured twice as
        fast as assigning them into a memory map of the file, which takes a page fault per 4 KiB written. Each
        block's writeback starts at once (``_start_writeback``), so the store's final fsync finds little left.

        Args:
            first_row: where the first video's frames go.
            first_video: the first video's index in the store.
            lengths: (n,) int64 frames to keep of each video (its first ones).
            videos: n (rgb, audio) pairs, (>= length, 1024) and (>= length, 128) in the store's dtype.
        """
        if not len(lengths):
            return
        row_bytes = FEATURE_DIM * self.dtype.itemsize
        block = np.empty((max(_WRITE_BLOCK // row_bytes, int(lengths.max())), FEATURE_DIM), self.dtype)
        checksums = np.empty(len(lengths), np.uint32)
        filled = 0
        position = self.offset + first_row * row_bytes
        with open(self.path, "rb+", buffering=0) as out:
            for video, (kept, (rgb, audio)) in enumerate(zip(lengths.tolist(), videos)):
                if filled + kept > len(block):
                    position += _write_at(out.fileno(), block[:filled], position)
                    filled = 0
                rows = block[filled : filled + kept]
                _put_rows(rows, rgb[:kept], audio[:kept])
                checksums[video] = crc32c.crc32c(rows)
                filled += kept
            _write_at(out.fileno(), block[:filled], position)
        self.write_checksums(first_video, checksums)

    def write_checksums(self, first_video: int, checksums: np.ndarray) -> None:
        """Store the CRC32Cs of videos ``first_video``, ``first_video + 1``, ... (uint32, as stored)."""
        if len(checksums):
            with open(self.path, "rb+", buffering=0) as out:
                _write_at(out.fileno(), checksums.astype("<u4"), self.checksum_offset + 4 * first_video)


@contextmanager
def building_frame_store(
    path: str | Path,
    table: VideoTable,
    *,
    level: str,
    source_version: str,
    num_classes: int,
    max_frames: int,
    manifest: dict[str, Any] | None = None,
) -> Iterator[FrameSlots]:
    """Build the store at ``path`` around frames the caller writes into the yielded slots, atomically.

    The store is created in a temporary file beside ``path`` with everything but the frames' bytes, the body
    fills the frames, then the store is marked finished, made durable and renamed over ``path``. Readers never
    see a partial store; an error leaves no temporary file and any previous store untouched.
    """
    path = Path(path)
    dtype = DTYPES[level]
    with replacing(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f["offsets"] = _csr_offsets(table.lengths)
            f.create_dataset("video_ids", data=table.video_ids, dtype=h5py.string_dtype())
            f["label_offsets"] = _csr_offsets(table.label_counts)
            f["label_values"] = table.label_values.astype(np.int32)
            f.attrs.update(
                level=level,
                source_version=source_version,
                num_classes=num_classes,
                max_frames=1 if level == "video" else max_frames,
                manifest=json.dumps(manifest or {}, sort_keys=True),
            )
            # Allocated now (not on first write) so their file offsets are known; never filled: every byte is
            # written by the caller.
            frames = contiguous_dataset(f, "frames", (int(table.lengths.sum()), FEATURE_DIM), dtype)
            checksums = contiguous_dataset(f, "checksums", (len(table.lengths),), np.dtype("<u4"))
            slots = FrameSlots(tmp, frames.id.get_offset(), checksums.id.get_offset(), dtype, len(frames))
        if slots.offset is not None:
            _reserve(tmp, slots.offset, slots.rows * FEATURE_DIM * dtype.itemsize)
        yield slots
        with h5py.File(tmp, "r+") as f:
            f.attrs["format"] = FORMAT  # last: marks the store finished
        # replacing() makes it durable before the rename makes it visible: see the module docstring


def contiguous_dataset(f: h5py.File, name: str, shape: tuple[int, ...], dtype: np.dtype) -> h5py.Dataset:
    """A contiguous dataset whose space is allocated at once (so its file offset is known: it can be written in
    place and memory-mapped) and never filled by HDF5 (every byte is the caller's to write)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _map(path: Path) -> mmap.mmap:
    """The whole file, mapped read-only (the map outlives the descriptor)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _rows_of(whole: mmap.mmap, dtype: np.dtype, offset: int, shape: tuple[int, int]) -> np.ndarray:
    """The read-only (rows, features) array of ``dtype`` at byte ``offset`` of a mapped file."""
    return np.frombuffer(whole, dtype, count=shape[0] * shape[1], offset=offset).reshape(shape)


def _put_rows(rows: np.ndarray, rgb: np.ndarray, audio: np.ndarray) -> None:
    """The store's row layout: each row is one frame, its rgb then its audio."""
    rows[:, :RGB_DIM] = rgb
    rows[:, RGB_DIM:] = audio


def _write_at(fd: int, data: np.ndarray, position: int) -> int:
    """Write all of ``data`` at byte ``position`` of ``fd`` and start its writeback; returns the bytes written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)
    _start_writeback(fd, position, done)
    return done


def _start_writeback(fd: int, position: int, size: int) -> None:
    """Have the kernel start writing a just-written byte range to disk, without waiting for it.

    A store is fsynced before it is renamed into place; left to the kernel, the writeback starts only then, and
    the whole store waits for the disk. Started block by block, it overlaps the rest of the conversion
    (``benchmarks/convert.py``, single worker: 979-1,105 MB/s of input before, 1,309-1,383 MB/s after, five runs
    each). On Linux, POSIX_FADV_DONTNEED starts writeback of the range's dirty pages and drops only clean ones,
    which these, just written, are not: the store stays in the page cache (``fincore`` shows all of it).
    """
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, position, size, os.POSIX_FADV_DONTNEED)


def _consecutive_runs(frames: np.ndarray, padding: np.ndarray) -> bool:
    """Whether every row of ``frames`` is one run of consecutive indices followed only by padding."""
    steps = np.arange(frames.shape[1])
    return bool(np.all(padding | (frames == frames[:, :1] + steps)) and np.all(padding[:, 1:] >= padding[:, :-1]))


def _csr_offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _reserve(path: Path, offset: int, size: int) -> None:
    """Allocate disk blocks for a byte range of a file (a hole until written), where the system can.

    A full disk then fails here, at once, not gigabytes later; and writes into allocated blocks skip delayed
    allocation (ext4), which measured up to 1.5x faster.
    """
    if hasattr(os, "posix_fallocate"):
        with open(path, "rb+") as f:
            os.posix_fallocate(f.fileno(), offset, size)
