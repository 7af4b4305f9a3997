"""The HDF5 frame store: layout, exact round trips, batched reads against numpy truth, worker safety, errors."""

from __future__ import annotations

import json
import mmap
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data import frame_store
from lightning_distill.data.frame_store import FORMAT
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.errors import DataError
from store_writer import write_frame_store

LENGTHS = [5, 1, 12, 3, 8]
LABELS = [[0, 3], [], [9], [1, 2, 4], [9, 0]]


@pytest.fixture(scope="module")
def videos() -> list[VideoRecord]:
    rng = np.random.default_rng(0)
    return [
        VideoRecord(
            f"v{i:03d}",
            np.array(labels, np.int64),
            rng.integers(0, 256, (n, 1024), dtype=np.uint8),
            rng.integers(0, 256, (n, 128), dtype=np.uint8),
        )
        for i, (n, labels) in enumerate(zip(LENGTHS, LABELS))
    ]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, videos):
    path = tmp_path_factory.mktemp("store") / "s.h5"
    count = write_frame_store(path, videos, level="frame", source_version="2018", num_classes=10, max_frames=10)
    assert count == len(videos)
    return path


def joint(video: VideoRecord, max_frames: int = 10) -> np.ndarray:
    return np.concatenate([video.rgb, video.audio], axis=1)[:max_frames]


def test_layout_is_as_documented(store_path, videos):
    with h5py.File(store_path, "r") as f:
        assert dict(f.attrs) | {"manifest": json.loads(f.attrs["manifest"])} == {
            "format": FORMAT, "level": "frame", "source_version": "2018", "num_classes": 10, "max_frames": 10,
            "manifest": {},
        }
        frames = f["frames"]
        assert frames.dtype == np.uint8 and frames.chunks is None and frames.compression is None
        kept = np.minimum(LENGTHS, 10)
        assert f["offsets"][:].tolist() == [0, *np.cumsum(kept).tolist()]
        assert np.array_equal(frames[:], np.concatenate([joint(v) for v in videos]))
        assert list(f["video_ids"].asstr()[:]) == [v.video_id for v in videos]
        assert f["label_values"].dtype == np.int32
        assert f["label_values"][:].tolist() == [x for labels in LABELS for x in labels]
        assert f["label_offsets"][:].tolist() == [0, *np.cumsum([len(x) for x in LABELS]).tolist()]


def test_videos_round_trip_exactly(store_path, videos):
    store = FrameStore(store_path)
    assert len(store) == 5 and store.video_ids == [v.video_id for v in videos]
    assert (store.level, store.source_version, store.num_classes, store.max_frames) == ("frame", "2018", 10, 10)
    assert store.lengths.dtype == np.int64 and store.lengths.tolist() == [5, 1, 10, 3, 8]  # 12 frames cut to 10
    for i, video in enumerate(videos):
        record = store[i]
        assert record.video_id == video.video_id and record.labels.dtype == np.int64
        assert record.labels.tolist() == LABELS[i] == store.labels(i).tolist()
        assert record.rgb.dtype == np.uint8 and np.array_equal(record.rgb, video.rgb[:10])
        assert np.array_equal(record.audio, video.audio[:10])
    assert store[-1].video_id == "v004" and store.labels(-5).tolist() == [0, 3]
    with pytest.raises(IndexError):
        store[5]
    with pytest.raises(IndexError):
        store[-6]


@pytest.mark.parametrize(
    "frames",
    [
        [[0, 1, 2, 3, 4, -1], [0, -1, -1, -1, -1, -1], [0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]],  # teacher-like
        [[4, 0, 2, -1, 1, 1], [0, 0, 0, 0, 0, 0], [9, 3, 7, 0, 0, 5], [-1, -1, 2, -1, -1, -1]],  # scattered
        [[-1] * 6] * 4,  # all padding
    ],
)
def test_read_frames_matches_numpy(store_path, videos, frames):
    store = FrameStore(store_path)
    chosen = np.array([0, 1, 2, -2])  # -2: the fourth video, like a list
    frames = np.array(frames, np.int64)
    out = store.read_frames(chosen, frames)
    assert out.shape == (4, 6, 1152) and out.dtype == np.uint8
    for b, v in enumerate([0, 1, 2, 3]):
        for t, f in enumerate(frames[b]):
            expected = np.zeros(1152, np.uint8) if f < 0 else joint(videos[v])[f]
            assert np.array_equal(out[b, t], expected)
    # Some features of each frame only (a skim's audio): the same values, nothing else copied.
    assert np.array_equal(store.read_frames(chosen, frames, slice(1024, None)), out[..., 1024:])


def test_read_frames_rejects_frames_beyond_the_video(store_path):
    store = FrameStore(store_path)
    with pytest.raises(IndexError):
        store.read_frames(np.array([1]), np.array([[1]]))  # video 1 has one frame
    with pytest.raises(IndexError):
        store.read_frames(np.array([5]), np.array([[0]]))


def test_multi_hot(store_path):
    store = FrameStore(store_path)
    out = store.multi_hot(np.array([3, 1, 4, 3]))
    expected = np.zeros((4, 10), np.float32)
    for row, labels in enumerate([[1, 2, 4], [], [9, 0], [1, 2, 4]]):
        expected[row, labels] = 1
    assert out.dtype == np.float32 and np.array_equal(out, expected)


def test_label_counts_match_each_videos_labels(store_path, videos):
    store = FrameStore(store_path)
    assert store.label_counts.tolist() == [len(v.labels) for v in videos]


def _read_in_worker(store: FrameStore) -> bytes:
    return store.read_frames(np.array([2]), np.array([[9, 0]])).tobytes()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_store_works_in_worker_processes(store_path, videos, method):
    store = FrameStore(store_path)
    store.read_frames(np.array([0]), np.array([[0]]))  # open the file in the parent before forking
    assert len(pickle.dumps(store)) < 500  # only the path travels
    with multiprocessing.get_context(method).Pool(1) as pool:
        result = pool.apply(_read_in_worker, (store,))
    assert result == joint(videos[2])[[9, 0]].tobytes()


def test_chunked_store_from_another_tool_is_read_through_h5py(tmp_path, store_path, videos):
    chunked = tmp_path / "chunked.h5"
    with h5py.File(store_path, "r") as src, h5py.File(chunked, "w") as dst:
        for name, dataset in src.items():
            layout = {"chunks": (2, 1152), "compression": "gzip"} if name == "frames" else {}
            dst.create_dataset(name, data=dataset[:], **layout)
        dst.attrs.update(src.attrs)
    a, b = FrameStore(store_path), FrameStore(chunked)
    frames = np.array([[3, 0, -1], [0, 1, 2]])
    assert np.array_equal(a.read_frames(np.array([4, 2]), frames), b.read_frames(np.array([4, 2]), frames))
    for columns in (slice(1024, None), slice(0, 5)):
        expected = a.read_frames(np.array([4, 2]), frames)[..., columns]
        assert np.array_equal(b.read_frames(np.array([4, 2]), frames, columns), expected)
        assert b.read_frames(np.array([4, 2]), np.array([[0, 1, 2], [0, 1, -1]]), columns).shape[2] == expected.shape[2]
    assert np.array_equal(b[2].rgb, videos[2].rgb[:10])


def test_video_level_store(tmp_path):
    rng = np.random.default_rng(3)
    records = [
        VideoRecord(f"m{i}", np.array([i]), *(rng.normal(size=(1, d)).astype(np.float32) for d in (1024, 128)))
        for i in range(3)
    ]
    path = tmp_path / "v.h5"
    write_frame_store(path, records, level="video", source_version="2017", num_classes=4716)
    store = FrameStore(path)
    assert store.max_frames == 1 and store.lengths.tolist() == [1, 1, 1] and store.dtype == np.float32
    out = store.read_frames(np.array([2, 0]), np.array([[0, -1], [0, -1]]))
    assert out.dtype == np.float32 and np.array_equal(out[:, 1], np.zeros((2, 1152), np.float32))
    assert np.array_equal(out[0, 0], np.concatenate([records[2].rgb[0], records[2].audio[0]]))


def test_label_outside_vocabulary_writes_nothing(tmp_path, videos):
    with pytest.raises(DataError, match=r"video 2 \('v002'\): a label is outside \[0, 5\)"):
        write_frame_store(tmp_path / "s.h5", videos, level="frame", source_version="2018", num_classes=5)
    assert list(tmp_path.iterdir()) == []


def test_opening_something_else_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing.h5: no such frame store"):
        FrameStore(tmp_path / "nothing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match="text.h5: not an HDF5 file"):
        FrameStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "unfinished.h5", "w") as f:
        f["frames"] = np.zeros((1, 1152), np.uint8)
    with pytest.raises(DataError, match="unfinished.h5: not a finished frame store"):
        FrameStore(tmp_path / "unfinished.h5")


def test_scattered_frames_ask_the_kernel_for_exactly_their_pages(store_path, videos, monkeypatch):
    """Read-ahead around a fault would read a video's neighbouring frames too: a k-frame read asks for the pages
    its rows' bytes lie on, in runs over small gaps, and nothing else."""
    store = FrameStore(store_path)
    reader = store._frames()
    asked = []
    reader._scattered_map = type("Recorder", (), {"madvise": lambda self, *advice: asked.append(advice)})()
    with h5py.File(store_path, "r") as f:
        start = f["frames"].id.get_offset()
    row_bytes, page = 1152, mmap.PAGESIZE
    gap = 2  # pages; the store is too small for the real one to leave two runs
    monkeypatch.setattr(frame_store, "_ASK_GAP_PAGES", gap)
    # Video 2's frame 3 (10 kept of its 12), video 0's frame 0, video 4's frame 7 twice: store rows 9, 0, 26, 26.
    out = store.read_frames(np.array([2, 0, 4]), np.array([[3, 3], [0, 0], [7, 7]]))
    assert np.array_equal(out, np.stack([joint(videos[v])[[f, f]] for v, f in ((2, 3), (0, 0), (4, 7))]))
    # By hand: the pages each row's bytes touch, in runs that continue over gaps of up to `gap` pages.
    pages = sorted({p for row in (0, 9, 26) for p in range((start + row * row_bytes) // page,
                                                                (start + (row + 1) * row_bytes - 1) // page + 1)})
    runs = []
    for p in pages:
        if runs and p <= runs[-1][1] + gap:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    # Rows far enough apart to be asked for apart, and rows whose pages are not adjacent asked for as one run.
    assert len(runs) > 1 and sum(b - a + 1 for a, b in runs) > len(pages)
    assert asked == [(mmap.MADV_WILLNEED, a * page, (b - a + 1) * page) for a, b in runs]
    # Only the audio columns: the pages of those bytes alone.
    asked.clear()
    store.read_frames(np.array([4]), np.array([[7, 7]]), slice(1024, None))
    first, last = start + 26 * row_bytes + 1024, start + 27 * row_bytes - 1
    assert asked == [(mmap.MADV_WILLNEED, first // page * page, (last // page - first // page + 1) * page)]
    # Frames close together (most share a run with another): read-ahead reads about what asking would, so nothing
    # is asked.
    asked.clear()
    close = store.read_frames(np.array([2]), np.array([[0, 1, 2, 3, 5]]))
    assert asked == [] and np.array_equal(close[0], joint(videos[2])[[0, 1, 2, 3, 5]])
