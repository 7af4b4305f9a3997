"""Frozen models' outputs computed once: a teacher's video-level outputs (or a skim's per-frame targets) for every
video of a frame store.

A Serial student whose loss terms compare only video-level teacher outputs (L_rep: the representation E_T;
L_pred: the probabilities P_T) does not need the teacher to run every step: the teacher is frozen and in eval
mode, so its outputs for a video never change. They are computed in one pass over the store, kept beside it,
and training batches read each video's row instead of the teacher's 300 frames. A utility skim's per-frame targets
(``training/frame_utility.py``) are kept the same way, one row of ``max_frames`` values per video.

File: ``<store dir>/<store name>.<kind>-<key>.h5`` (``CacheKind``: ``targets``, format "vdistill-teacher-targets/2",
datasets ``representation`` (N, E) and ``probabilities`` (N, C), float32; ``utility``, format
"vdistill-frame-utility/1", dataset ``utility`` (N, max_frames) float16), in store order; attributes ``format``
(written last: a file without it is unfinished), ``key``, ``teacher``, ``store``, ``build_seconds``.

The key is a hash of everything the outputs depend on: the teacher checkpoint's bytes, the store's content
(``FrameStore.fingerprint``) and the teacher's view of it (sampler, normalisation, max_frames). A new teacher,
changed data or another view gets another file; a file is never used for another key. Built atomically under a
lock, like a store (``data/keyed_files.py``): concurrent students wait for one build, and a killed build leaves
only a temporary that the next build deletes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lightning_distill.data.frame_store import FrameStore, contiguous_dataset
from lightning_distill.data.keyed_files import mapped, open_keyed, opened_or_built
from lightning_distill.errors import DataError

_HASH_BLOCK = 16 << 20


@dataclass(frozen=True)
class CacheKind:
    """What a cache holds: its file name part, format tag, datasets and their stored type, and its name in errors."""

    name: str
    format: str
    fields: tuple[str, ...]
    dtype: np.dtype
    what: str


# /2: targets of the teacher in eval mode; /1 files (train-mode outputs, see training/teacher_targets.py) are rebuilt.
TEACHER_TARGETS = CacheKind("targets", "vdistill-teacher-targets/2", ("representation", "probabilities"),
                            np.dtype(np.float32), "teacher-target cache")
# Each frame's standardised utility, NaN where undefined (padding, unlabelled videos). Half precision: the estimates
# it trains need no more, and YouTube-8M's 3.9M training videos of 300 slots take 2.3 GB.
FRAME_UTILITY = CacheKind("utility", "vdistill-frame-utility/1", ("utility",), np.dtype(np.float16),
                          "frame-utility cache")


class TargetCache:
    """Read access to a finished cache: the teacher's outputs for given videos of its store; picklable.

    Rows are read through a memory map (a paper-size cache of YouTube-8M's 3.9M training videos is ~120 GB).

    Args:
        path: a cache written by ``build_target_cache``.
        key: the key it must have been built for.
        kind: what it holds.

    Raises:
        DataError: the file is unfinished, of another format, or was built for another key.
    """

    def __init__(self, path: str | Path, key: str, kind: CacheKind = TEACHER_TARGETS) -> None:
        self.path = Path(path)
        self.key = key
        self.kind = kind
        with open_keyed(self.path, kind.format, key, f"{kind.what} for this teacher and data") as f:
            self.build_seconds = float(f.attrs["build_seconds"])
            self._rows = {name: mapped(self.path, f[name]) for name in kind.fields}

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "key": self.key, "kind": self.kind}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["key"], state["kind"])

    def __len__(self) -> int:
        return len(self._rows[self.kind.fields[0]])

    def read(self, videos: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of the store's videos ``videos``: for teacher targets ``{"representation": (B, E),
        "probabilities": (B, C)}`` float32, for frame utility ``{"utility": (B, max_frames)}`` float16."""
        return {name: np.take(rows, videos, axis=0) for name, rows in self._rows.items()}


def cache_path(store: Path, key: str, kind: CacheKind = TEACHER_TARGETS) -> Path:
    """Where the ``kind`` cache of ``key`` for ``store`` lives: beside it, named after all three."""
    return store.with_name(f"{store.stem}.{kind.name}-{key[:16]}.h5")


def cache_key(teacher_checkpoint: str | Path, store: FrameStore, view: dict[str, object]) -> str:
    """The hash naming a cache: teacher checkpoint bytes, store content, and the teacher's view settings.

    Args:
        teacher_checkpoint: the frozen teacher's checkpoint file.
        store: the store whose videos the teacher sees.
        view: everything else the outputs depend on (sampler, normalisation, max_frames), JSON-serialisable.
    """
    stat = Path(teacher_checkpoint).stat()
    digest = _checkpoint_digest(str(teacher_checkpoint), stat.st_size, stat.st_mtime_ns).copy()
    digest.update(store.fingerprint().encode())
    digest.update(json.dumps(view, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _checkpoint_digest(path: str, size: int, mtime_ns: int) -> hashlib._Hash:
    """sha256 state after a checkpoint's bytes, kept per process: one fit keys several caches by one checkpoint (its
    teacher targets, a skim's train and val utilities), and at paper sizes each read is ~1 GB. The size and
    modification time are part of the memo's key, so a rewritten file is read again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest


def build_target_cache(
    store_path: Path,
    key: str,
    batches: Callable[[], Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]],
    *,
    teacher: str = "",
    kind: CacheKind = TEACHER_TARGETS,
) -> tuple[TargetCache, bool]:
    """Open the cache of ``key`` beside ``store_path``, building it first if it does not exist.

    Args:
        store_path: the store the targets are for.
        key: ``cache_key`` of the teacher, store and view.
        batches: called only to build: yields (store indices (B,), a (B, ...) row of each of ``kind.fields``)
            until every video of the store has its row.
        teacher: names the teacher in the file's attributes.
        kind: what the cache holds.

    Returns:
        The cache, and whether this call built it.

    Raises:
        DataError: the batches left a video without its row.
    """
    path = cache_path(store_path, key, kind)

    def build(f: h5py.File) -> None:
        num_videos = len(FrameStore(store_path))
        filled = np.zeros(num_videos, bool)
        for videos, rows in batches():
            for name in kind.fields:
                if name not in f:  # readers memory-map it
                    contiguous_dataset(f, name, (num_videos, rows[name].shape[1]), kind.dtype)
                _write_rows(f[name], videos, rows[name])
            filled[videos] = True
        if not filled.all():
            raise DataError(f"{path}: the teacher produced no targets for {int((~filled).sum())} videos")
        f.attrs.update(teacher=teacher, store=str(store_path))

    return opened_or_built(path, kind.format, key, lambda: TargetCache(path, key, kind), build)


def _write_rows(dataset: h5py.Dataset, videos: np.ndarray, rows: np.ndarray) -> None:
    """Rows of store indices ``videos`` (any order) into ``dataset``, as one slice when they are consecutive."""
    order = np.argsort(videos)
    videos, rows = videos[order], rows[order]
    if len(videos) and videos[-1] - videos[0] == len(videos) - 1:
        dataset[videos[0] : videos[-1] + 1] = rows
    else:
        dataset[videos] = rows
