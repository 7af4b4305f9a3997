"""Features kept apart: a few columns of every frame of a frame store, in a file of their own.

A frame-scoring sampler (``SkimSampler``) reads a few features of every frame of a video (its audio, or the
leading PCA components) to choose which k frames to read whole. In the store a frame's 1152 features sit side by
side in one 1152-byte row, so reading 128 of them from every row still makes the operating system read every page
of the video from disk: the skim would save FLOPs but no I/O. A ``ColumnStore`` holds just those columns, rows in
the store's order, so scoring reads ``width / 1152`` of the bytes (the audio skim 11%, 32 rgb + 32 audio 6%) and
the k chosen frames come from the store. ``FrameStore.keep_apart`` makes the store's reads of those columns come
from it; nothing else changes.

File: ``<store dir>/<store name>.columns-<key>.h5`` (format "vdistill-column-store/1"), dataset ``frames``
(F, width) in the store's dtype, contiguous (memory-mapped like the store's); attributes ``format`` (written
last: a file without it is unfinished), ``key``, ``columns`` (JSON [[start, stop], ...] of the store's columns,
side by side in this order), ``store``, ``build_seconds``.

The key hashes the store's content (``FrameStore.fingerprint``) and the columns, so changed data gets a new
file and a file is never used for another store. Built once (one sequential pass over the store), atomically
and under a lock (``data/keyed_files.py``): concurrent readers wait for one build, and a killed build leaves only
a temporary that the next one deletes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from lightning_distill.data.frame_store import FrameStore, contiguous_dataset
from lightning_distill.data.keyed_files import mapped, open_keyed, opened_or_built
from lightning_distill.data.yt8m import FEATURE_DIM

FORMAT = "vdistill-column-store/1"
_BUILD_BLOCK = 64 << 20  # bytes of the store's rows read per write while building


class ColumnStore:
    """Read access to a finished column store: rows of the store's ``frames``, its ``columns`` only; picklable.

    It is the ``RowSource`` that ``FrameStore.keep_apart`` takes.

    Args:
        path: a file written by ``open_column_store``.
        key: the key it must have been built for (``column_store_key``).

    Raises:
        DataError: the file is unfinished, of another format, or was built for another key.
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        with open_keyed(self.path, FORMAT, key, "column store for this store and these columns") as f:
            self.columns: tuple[slice, ...] = tuple(slice(a, b) for a, b in json.loads(f.attrs["columns"]))
            self.build_seconds = float(f.attrs["build_seconds"])
            self._rows = mapped(self.path, f["frames"])
        starts = np.cumsum([0] + [c.stop - c.start for c in self.columns])
        self._places = [(c, int(start)) for c, start in zip(self.columns, starts)]

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["key"])

    @property
    def width(self) -> int:
        """Features kept of each frame."""
        return self._rows.shape[1]

    def locate(self, columns: slice) -> slice | None:
        """Where the store's ``columns`` lie in this file's rows; None unless one of its column ranges holds them
        all."""
        wanted = range(FEATURE_DIM)[columns]
        if wanted.step != 1 or not len(wanted):
            return None
        for kept, place in self._places:
            if kept.start <= wanted.start and wanted.stop <= kept.stop:
                return slice(place + wanted.start - kept.start, place + wanted.stop - kept.start)
        return None

    def rows(self, start: int, stop: int, columns: slice) -> np.ndarray:
        """Rows [start, stop), their ``columns`` (this file's numbering): a view of the memory map."""
        return self._rows[start:stop, columns]

    def gather(self, rows: np.ndarray, columns: slice) -> np.ndarray:
        """A copy of the given rows' ``columns`` (this file's numbering), any order, repeats allowed."""
        return self._rows[rows, columns]


def column_store_path(store_path: Path, key: str) -> Path:
    """Where the column store of ``key`` lives: beside its store, named after both."""
    return store_path.with_name(f"{store_path.stem}.columns-{key[:16]}.h5")


def column_store_key(store: FrameStore, columns: tuple[slice, ...]) -> str:
    """The hash naming a column store: the store's content and the columns kept."""
    digest = hashlib.sha256(store.fingerprint().encode())
    digest.update(json.dumps(_bounds(columns)).encode())
    return digest.hexdigest()


def open_column_store(store: FrameStore, columns: tuple[slice, ...]) -> tuple[ColumnStore, bool]:
    """Open the column store of ``columns`` beside ``store``, building it first if it does not exist.

    Args:
        store: the frame store whose columns are kept apart.
        columns: the store's columns to keep, side by side in this order (slices of its 1152, step 1).

    Returns:
        The column store, and whether this call built it.

    Raises:
        ValueError: a column slice is empty or has a step.
    """
    bounds = _bounds(columns)
    key = column_store_key(store, columns)
    path = column_store_path(store.path, key)

    def build(f: h5py.File) -> None:
        total = int(store.lengths.sum())
        width = sum(stop - start for start, stop in bounds)
        frames = contiguous_dataset(f, "frames", (total, width), store.dtype)
        block = max(_BUILD_BLOCK // (FEATURE_DIM * store.dtype.itemsize), 1)
        for first in range(0, total, block):
            stop = min(first + block, total)
            frames[first:stop] = np.concatenate([store.rows(first, stop, slice(a, b)) for a, b in bounds], 1)
        f.attrs.update(columns=json.dumps(bounds), store=str(store.path))

    return opened_or_built(path, FORMAT, key, lambda: ColumnStore(path, key), build)


def _bounds(columns: tuple[slice, ...]) -> list[list[int]]:
    """[[start, stop], ...] of column slices of a frame's features; they must be non-empty and of step 1."""
    bounds = []
    for c in columns:
        kept = range(FEATURE_DIM)[c]
        if kept.step != 1 or not len(kept):
            raise ValueError(f"columns kept apart must be non-empty slices of step 1 of {FEATURE_DIM}, got {c}")
        bounds.append([kept.start, kept.stop])
    return bounds


__all__ = ["ColumnStore", "column_store_key", "column_store_path", "open_column_store"]
