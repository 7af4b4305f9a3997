"""Features kept apart: a column store holds the store's columns row for row, reads of them come from it, and it
is rebuilt for changed data, never used half-written."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from lightning_distill.data.column_store import ColumnStore, column_store_key, column_store_path, open_column_store
from lightning_distill.data.convert import convert
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.yt8m import FEATURE_DIM, RGB_DIM
from lightning_distill.errors import DataError

SKIM = (slice(0, 2), slice(RGB_DIM, None))  # two leading rgb features and the audio


@pytest.fixture
def store(synthetic_tfrecords, tmp_path) -> FrameStore:
    path = tmp_path / "test.h5"
    convert(sorted(synthetic_tfrecords.glob("test*.tfrecord")), path)
    return FrameStore(path)


def _every_frame(store: FrameStore) -> tuple[np.ndarray, np.ndarray]:
    """All videos, and (N, T) every frame of each (-1 past its end)."""
    steps = np.arange(int(store.lengths.max()))
    return np.arange(len(store)), np.where(steps < store.lengths[:, None], steps, -1)


def test_a_column_store_holds_the_stores_columns_row_for_row(store):
    columns, built = open_column_store(store, SKIM)
    assert built and columns.path == column_store_path(store.path, columns.key)
    assert columns.path.parent == store.path.parent
    with h5py.File(store.path, "r") as f:  # the truth, read by h5py from the store's own dataset
        everything = f["frames"][:]
    kept = columns.rows(0, len(everything), slice(None))
    assert kept.dtype == np.uint8
    assert np.array_equal(kept, np.concatenate([everything[:, :2], everything[:, RGB_DIM:]], axis=1))
    assert columns.width == 2 + 128 and columns.columns == (slice(0, 2), slice(RGB_DIM, 1152))
    again, built = open_column_store(FrameStore(store.path), SKIM)
    assert not built and again.path == columns.path


def test_reads_of_kept_columns_come_from_the_column_store_alone(store, monkeypatch):
    videos, every = _every_frame(store)
    scattered = np.array([[0, 2, -1], [1, 0, 3]])  # repeats, any order, padding
    # All the audio, both kept rgb features, and a part of the audio: every one held by the column store.
    columns = {"audio": slice(RGB_DIM, None), "rgb": slice(0, 2), "part": slice(RGB_DIM + 5, RGB_DIM + 9)}
    reads = {"every": every, "scattered": scattered}
    expected = {
        (name, kept): store.read_frames(videos[: len(frames)], frames, columns[kept])
        for name, frames in reads.items()
        for kept in columns
    }
    assert not store.keeps_apart(SKIM)
    assert store.keep_apart(open_column_store(store, SKIM)[0])
    assert not store.keep_apart(open_column_store(store, SKIM)[0])  # the same columns once
    # The same columns however spelt, but not in another order (the column store's rows hold them in its own).
    assert store.keeps_apart((slice(0, 2), slice(RGB_DIM, FEATURE_DIM))) and store.keeps_apart(SKIM)
    assert not store.keeps_apart((SKIM[1], SKIM[0])) and not store.keeps_apart((SKIM[1],))
    # The store's own rows are not touched for columns the column store holds.
    monkeypatch.setattr(FrameStore, "_frames", lambda self: pytest.fail("read the store's rows"))
    for (name, kept), truth in expected.items():
        frames = reads[name]
        assert np.array_equal(store.read_frames(videos[: len(frames)], frames, columns[kept]), truth)
    copy = pickle.loads(pickle.dumps(store))  # a loader worker's: it keeps the columns apart too
    assert np.array_equal(copy.read_frames(videos, every, columns["audio"]), expected["every", "audio"])
    with pytest.raises(pytest.fail.Exception, match="read the store's rows"):
        store.read_frames(videos, every, slice(2, 4))  # columns it does not hold come from the store


def test_changed_data_gets_another_column_store(store, synthetic_tfrecords):
    first, _ = open_column_store(store, SKIM)
    convert(sorted(synthetic_tfrecords.glob("train*.tfrecord")), store.path)  # the same path, other videos
    changed = FrameStore(store.path)
    second, built = open_column_store(changed, SKIM)
    assert built and second.path != first.path
    with pytest.raises(DataError, match=str(first.path)):
        ColumnStore(first.path, second.key)  # a file is never read for another store
    with h5py.File(changed.path, "r") as f:
        assert np.array_equal(second.rows(0, 5, slice(2, None)), f["frames"][:5, RGB_DIM:])


def test_a_killed_build_leaves_nothing_that_is_used(store, monkeypatch):
    columns, _ = open_column_store(store, SKIM)
    truth = np.array(columns.rows(0, 50, slice(None)))
    del columns
    # A build killed before it finished: its temporary, and a file without the finishing mark at the place.
    path = column_store_path(store.path, column_store_key(store, SKIM))
    stale = path.with_name(f".{path.name}.tmp-killed")
    stale.write_bytes(b"half")
    with h5py.File(path, "r+") as f:
        del f.attrs["format"]
    rebuilt, built = open_column_store(store, SKIM)
    assert built and not stale.exists() and np.array_equal(rebuilt.rows(0, 50, slice(None)), truth)
    # A build that fails half-way leaves no file and no temporary.
    path.unlink()
    monkeypatch.setattr(FrameStore, "rows", lambda self, *args: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        open_column_store(store, SKIM)
    assert not path.exists() and not list(path.parent.glob(f".{path.name}.tmp-*"))


@pytest.mark.parametrize("columns", [(slice(0, 8, 2),), (slice(5, 5),), (slice(RGB_DIM + 200, None),)])
def test_columns_must_be_plain_non_empty_ranges(store, columns):
    with pytest.raises(ValueError, match="non-empty slices of step 1"):
        open_column_store(store, columns)
    assert not list(store.path.parent.glob("*.columns-*.h5"))
