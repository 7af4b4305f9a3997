"""Files kept beside a frame store, keyed by what they were computed from (teacher targets, skimmed features).

Each is an HDF5 file whose ``key`` attribute names what it was computed from and whose ``format`` attribute,
written last, marks it finished. It is opened only when both match, and built once: under a lock, so concurrent
processes wait for one build, and atomically, so a killed build leaves only a temporary that the next build
deletes. How long the build took is kept as ``build_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np

from lightning_distill.atomic_files import exclusive, remove_stale_temporaries, replacing
from lightning_distill.errors import DataError

Opened = TypeVar("Opened")


def open_keyed(path: Path, file_format: str, key: str, what: str) -> h5py.File:
    """The file at ``path``, open for reading, if it is a finished ``file_format`` file built for ``key``.

    Raises:
        DataError: it is unfinished, of another format or built for another key ("<path>: not a finished <what>").
        OSError: it is absent or not HDF5.
    """
    f = h5py.File(path, "r")
    if f.attrs.get("format") != file_format or f.attrs.get("key") != key:
        f.close()
        raise DataError(f"{path}: not a finished {what}")
    return f


def mapped(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    """``dataset`` of the file at ``path`` (written contiguous, see ``contiguous_dataset``) as a read-only memory
    map, a plain array: reads of rows touch only their pages. Zeros when it is empty: HDF5 never allocates an empty
    dataset, so it has no offset to map."""
    offset = dataset.id.get_offset()
    if offset is None:
        return np.zeros(dataset.shape, dataset.dtype)
    return np.memmap(path, dataset.dtype, "r", offset=offset, shape=dataset.shape).view(np.ndarray)


def opened_or_built(
    path: Path, file_format: str, key: str, open_file: Callable[[], Opened], build: Callable[[h5py.File], None]
) -> tuple[Opened, bool]:
    """``open_file()`` of the finished file at ``path``, building it first with ``build`` if there is none.

    Args:
        path: the file's place.
        file_format: its ``format`` attribute.
        key: its ``key`` attribute.
        open_file: opens it (raising ``OSError`` or ``DataError`` when it is absent or unfinished).
        build: writes its content into a new HDF5 file (a temporary beside ``path``); the attributes above are
            added after it.

    Returns:
        What ``open_file`` returns, and whether this call built the file.
    """
    with exclusive(path):
        remove_stale_temporaries(path)
        try:
            return open_file(), False
        except (OSError, DataError):
            pass  # absent or unfinished: build it
        start = time.monotonic()
        with replacing(path) as tmp:
            with h5py.File(tmp, "w") as f:
                build(f)
                f.attrs.update(key=key, build_seconds=time.monotonic() - start)
                f.attrs["format"] = file_format  # last: marks the file finished
        return open_file(), True


__all__ = ["open_keyed", "opened_or_built"]
