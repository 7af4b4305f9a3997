"""Teacher targets computed once: a frozen teacher's video-level outputs for every video of a frame store.

A Serial student whose loss terms compare only video-level teacher outputs (L_rep: the representation E_T;
L_pred: the probabilities P_T) does not need the teacher to run every step: the teacher is frozen and in eval
mode, so its outputs for a video never change. They are computed in one pass over the store, kept beside it,
and training batches read each video's row instead of the teacher's 300 frames.

File: ``<store dir>/<store name>.targets-<key>.h5`` (format "vdistill-teacher-targets/2"), datasets
``representation`` (N, E) and ``probabilities`` (N, C), float32, in store order; attributes ``format`` (written
last: a file without it is unfinished), ``key``, ``teacher``, ``store``, ``build_seconds``.

The key is a hash of everything the outputs depend on: the teacher checkpoint's bytes, the store's content
(``FrameStore.fingerprint``) and the teacher's view of it (sampler, normalisation, max_frames). A new teacher,
changed data or another view gets another file; a file is never used for another key. Built atomically under a
lock, like a store (``data/keyed_files.py``): concurrent students wait for one build, and a killed build leaves
only a temporary that the next build deletes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np

from lightning_distill.data.frame_store import FrameStore, contiguous_dataset
from lightning_distill.data.keyed_files import mapped, open_keyed, opened_or_built
from lightning_distill.errors import DataError

# /2: targets of the teacher in eval mode; /1 files (train-mode outputs, see training/teacher_targets.py) are rebuilt.
FORMAT = "vdistill-teacher-targets/2"
FIELDS = ("representation", "probabilities")
_HASH_BLOCK = 16 << 20


class TargetCache:
    """Read access to a finished cache: the teacher's outputs for given videos of its store; picklable.

    Rows are read through a memory map (a paper-size cache of YouTube-8M's 3.9M training videos is ~120 GB).

    Args:
        path: a cache written by ``build_target_cache``.
        key: the key it must have been built for.

    Raises:
        DataError: the file is unfinished, of another format, or was built for another key.
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        with open_keyed(self.path, FORMAT, key, "teacher-target cache for this teacher and data") as f:
            self.build_seconds = float(f.attrs["build_seconds"])
            self._rows = {name: mapped(self.path, f[name]) for name in FIELDS}

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["key"])

    def __len__(self) -> int:
        return len(self._rows["representation"])

    def read(self, videos: np.ndarray) -> dict[str, np.ndarray]:
        """``{"representation": (B, E), "probabilities": (B, C)}`` float32 rows of the store's videos ``videos``."""
        return {name: np.take(rows, videos, axis=0) for name, rows in self._rows.items()}


def cache_path(store: Path, key: str) -> Path:
    """Where the cache of ``key`` for ``store`` lives: beside it, named after both."""
    return store.with_name(f"{store.stem}.targets-{key[:16]}.h5")


def cache_key(teacher_checkpoint: str | Path, store: FrameStore, view: dict[str, object]) -> str:
    """The hash naming a cache: teacher checkpoint bytes, store content, and the teacher's view settings.

    Args:
        teacher_checkpoint: the frozen teacher's checkpoint file.
        store: the store whose videos the teacher sees.
        view: everything else the outputs depend on (sampler, normalisation, max_frames), JSON-serialisable.
    """
    digest = hashlib.sha256()
    with open(teacher_checkpoint, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    digest.update(store.fingerprint().encode())
    digest.update(json.dumps(view, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def build_target_cache(
    store_path: Path,
    key: str,
    batches: Callable[[], Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]],
    *,
    teacher: str = "",
) -> tuple[TargetCache, bool]:
    """Open the cache of ``key`` beside ``store_path``, building it first if it does not exist.

    Args:
        store_path: the store the targets are for.
        key: ``cache_key`` of the teacher, store and view.
        batches: called only to build: yields (store indices (B,), ``{"representation": (B, E),
            "probabilities": (B, C)}``) until every video of the store has its row.
        teacher: names the teacher in the file's attributes.

    Returns:
        The cache, and whether this call built it.

    Raises:
        DataError: the batches left a video without its row.
    """
    path = cache_path(store_path, key)

    def build(f: h5py.File) -> None:
        num_videos = len(FrameStore(store_path))
        filled = np.zeros(num_videos, bool)
        for videos, rows in batches():
            for name in FIELDS:
                if name not in f:  # readers memory-map it
                    contiguous_dataset(f, name, (num_videos, rows[name].shape[1]), np.dtype(np.float32))
                _write_rows(f[name], videos, rows[name])
            filled[videos] = True
        if not filled.all():
            raise DataError(f"{path}: the teacher produced no targets for {int((~filled).sum())} videos")
        f.attrs.update(teacher=teacher, store=str(store_path))

    return opened_or_built(path, FORMAT, key, lambda: TargetCache(path, key), build)


def _write_rows(dataset: h5py.Dataset, videos: np.ndarray, rows: np.ndarray) -> None:
    """Rows of store indices ``videos`` (any order) into ``dataset``, as one slice when they are consecutive."""
    order = np.argsort(videos)
    videos, rows = videos[order], rows[order]
    if len(videos) and videos[-1] - videos[0] == len(videos) - 1:
        dataset[videos[0] : videos[-1] + 1] = rows
    else:
        dataset[videos] = rows
