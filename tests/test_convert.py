"""``convert``: TFRecords written by protobuf round-trip bit-exactly; reruns, parallelism, locking, bad inputs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import crc32c
import h5py
import numpy as np
import pytest
from tfrecord import example_pb2
from tfrecord import reader as tfrecord_reader

from lightning_distill.data import frame_store
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.convert import convert
from lightning_distill.data.tfrecord_reader import index_shard
from lightning_distill.errors import DataError
from yt8m_writer import (
    SHARED,
    frame_level_example,
    framed_payloads,
    needs_real_shards,
    random_video,
    video_level_example,
    write_tfrecord,
)


def make_videos(seed: int, lengths: list[int]) -> list[tuple[str, list[int] | None, np.ndarray, np.ndarray]]:
    """Videos with 0-3 labels; the second has no labels key at all."""
    rng = np.random.default_rng(seed)
    videos = []
    for i, n in enumerate(lengths):
        labels = None if i == 1 else [int(x) for x in rng.choice(3862, i % 4, replace=False)]
        videos.append((f"{seed:02d}{i:02d}", labels, *random_video(rng, n)))
    return videos


@pytest.fixture
def shards(tmp_path) -> tuple[Path, list[list[tuple]]]:
    """Three shards in a folder, written out of name order; one video of 305 frames, labels empty or absent."""
    source = tmp_path / "src"
    source.mkdir()
    contents = {2: make_videos(2, [4, 2]), 0: make_videos(0, [3, 305, 1]), 1: make_videos(1, [6])}
    for index, videos in contents.items():
        records = [frame_level_example(*v, segment_fields=index == 1) for v in videos]  # 2019 fields in one shard
        write_tfrecord(source / f"train{index:04d}.tfrecord", records)
    return source, [contents[i] for i in sorted(contents)]


def assert_store_holds(path: Path, videos: list[tuple], max_frames: int = 300) -> None:
    store = FrameStore(path)
    assert store.video_ids == [v[0] for v in videos]
    assert store.lengths.tolist() == [min(len(v[2]), max_frames) for v in videos]
    for i, (_, labels, rgb, audio) in enumerate(videos):
        record = store[i]
        assert record.labels.tolist() == (labels or [])
        assert np.array_equal(record.rgb, rgb[:max_frames]) and np.array_equal(record.audio, audio[:max_frames])


def store_contents(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {**{name: f[name][:].tolist() for name in f}, **{k: str(v) for k, v in f.attrs.items()}}


def test_frame_level_round_trip(shards, tmp_path):
    source, contents = shards
    result = convert(str(source / "train*.tfrecord"), tmp_path / "train.h5", progress=False)
    assert (result.videos, result.skipped) == (6, False)
    assert_store_holds(tmp_path / "train.h5", [v for videos in contents for v in videos])
    store = FrameStore(tmp_path / "train.h5")
    assert (store.level, store.source_version, store.num_classes, store.max_frames) == ("frame", "2018", 3862, 300)
    assert [s["path"] for s in store.manifest["sources"]] == [str(p) for p in sorted(source.resolve().glob("*"))]


def test_parallel_conversion_is_identical(shards, tmp_path):
    source, _ = shards
    inputs = [str(p) for p in source.glob("*")]  # unsorted on purpose
    convert(inputs, tmp_path / "one.h5", workers=1, max_frames=5, progress=False)
    convert(inputs, tmp_path / "two.h5", workers=2, max_frames=5, progress=False)
    assert store_contents(tmp_path / "one.h5") == store_contents(tmp_path / "two.h5")
    assert FrameStore(tmp_path / "two.h5").lengths.max() == 5


def test_rerun_skips_and_changes_rebuild(shards, tmp_path):
    source, contents = shards
    output = tmp_path / "train.h5"
    pattern = str(source / "train*.tfrecord")
    convert(pattern, output, progress=False)
    before = output.stat()
    again = convert(pattern, output, progress=True)
    assert again.skipped and again.videos == 6
    assert (output.stat().st_ino, output.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    extra = make_videos(9, [2])
    write_tfrecord(source / "train0009.tfrecord", [frame_level_example(*v) for v in extra])
    rebuilt = convert(pattern, output, progress=False)
    assert not rebuilt.skipped and output.stat().st_ino != before.st_ino
    assert_store_holds(output, [v for videos in contents for v in videos] + extra)
    assert not convert(pattern, output, max_frames=100, progress=False).skipped  # options count too


def test_2017_records_and_class_override(tmp_path):
    videos = make_videos(5, [2, 3, 2])  # the third video has two labels, the others none
    write_tfrecord(tmp_path / "a.tfrecord", [frame_level_example(*v, id_key="video_id") for v in videos])
    convert(str(tmp_path / "a.tfrecord"), tmp_path / "s.h5", progress=False)
    assert (FrameStore(tmp_path / "s.h5").source_version, FrameStore(tmp_path / "s.h5").num_classes) == ("2017", 4716)
    assert_store_holds(tmp_path / "s.h5", videos)
    with pytest.raises(DataError, match=r"a.tfrecord: record 2: label \d+ is outside \[0, 10\)"):
        convert(str(tmp_path / "a.tfrecord"), tmp_path / "t.h5", num_classes=10, progress=False)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix != ".tfrecord")


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_record_leaves_no_store_and_keeps_the_old_one(shards, tmp_path, workers):
    source, _ = shards
    output = tmp_path / "train.h5"
    pattern = str(source / "train*.tfrecord")
    convert(pattern, output, progress=False)
    old = output.read_bytes()
    records = [frame_level_example(*v) for v in make_videos(1, [6, 2, 3])]
    bad = write_tfrecord(source / "train0001.tfrecord", records, corrupt="data_crc", at=2)
    with pytest.raises(DataError, match=rf"{bad.resolve()}: record 2: data CRC mismatch"):
        convert(pattern, output, workers=workers, progress=False)
    assert output.read_bytes() == old
    assert leftovers(tmp_path) == ["src", "train.h5", "train.h5.lock"]
    fresh = tmp_path / "fresh.h5"
    with pytest.raises(DataError):
        convert(pattern, fresh, workers=workers, progress=False)
    assert not fresh.exists() and leftovers(tmp_path) == ["fresh.h5.lock", "src", "train.h5", "train.h5.lock"]


def _index_then_touch(path: Path, **options):
    """index_shard, then a newer mtime on the shard, as if it were rewritten between the two passes."""
    index = index_shard(path, **options)
    os.utime(path, ns=(index.stat[1] + 10**9, index.stat[1] + 10**9))
    return index


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_while_writing_leaves_no_store_and_keeps_the_old_one(shards, tmp_path, monkeypatch, workers):
    """A failure in the second pass, after the temporary store exists, cleans up as one in the first does."""
    source, _ = shards
    output = tmp_path / "train.h5"
    pattern = str(source / "train*.tfrecord")
    convert(pattern, output, progress=False)
    old = output.read_bytes()
    monkeypatch.setattr("lightning_distill.data.convert.index_shard", _index_then_touch)  # forked workers too
    with pytest.raises(DataError, match=r"train0000.tfrecord: changed while it was being converted"):
        convert(pattern, output, max_frames=5, workers=workers, progress=False)
    assert output.read_bytes() == old
    assert leftovers(tmp_path) == ["src", "train.h5", "train.h5.lock"]


@pytest.mark.parametrize("workers", [1, 2])
def test_frames_written_in_many_blocks_round_trip(shards, tmp_path, monkeypatch, workers):
    source, contents = shards
    monkeypatch.setattr(frame_store, "_WRITE_BLOCK", 3 * 1152)  # a block per video or two, not per shard
    convert(str(source / "train*.tfrecord"), tmp_path / "s.h5", workers=workers, progress=False)
    assert_store_holds(tmp_path / "s.h5", [v for videos in contents for v in videos])


def test_bad_arguments(shards, tmp_path):
    source, _ = shards
    with pytest.raises(DataError, match=r"nowhere/\*.tfrecord: matches no file"):
        convert(str(tmp_path / "nowhere" / "*.tfrecord"), tmp_path / "s.h5", progress=False)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="a_file: cannot create the output directory"):
        convert(str(source / "*.tfrecord"), tmp_path / "a_file" / "s.h5", progress=False)


def test_output_directories_are_created(shards, tmp_path):
    source, _ = shards
    convert(str(source / "*.tfrecord"), tmp_path / "new" / "deeper" / "s.h5", progress=False)
    assert len(FrameStore(tmp_path / "new" / "deeper" / "s.h5")) == 6


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_store_mode_follows_the_umask(shards, tmp_path, umask, mode):
    source, _ = shards
    previous = os.umask(umask)
    try:
        convert(str(source / "*.tfrecord"), tmp_path / "s.h5", progress=False)
    finally:
        os.umask(previous)
    assert (tmp_path / "s.h5").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_video_level_features_are_refused(tmp_path, bad):
    mean_rgb = np.zeros(1024, np.float32)
    mean_rgb[17] = bad
    records = [video_level_example("ok", [1], np.zeros(1024), np.zeros(128)),
               video_level_example("bad", [2], mean_rgb, np.zeros(128))]
    shard = write_tfrecord(tmp_path / "v.tfrecord", records)
    expected = rf"{shard.resolve()}: record 1: video 'bad': 'mean_rgb' holds NaN or infinite values"
    with pytest.raises(DataError, match=expected):
        convert(str(shard), tmp_path / "v.h5", progress=False)
    assert not (tmp_path / "v.h5").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicate_video_ids_are_refused(shards, tmp_path, workers):
    source, contents = shards
    repeated = contents[0][1]  # the second video of train0000 again, as record 1 of a later shard
    write_tfrecord(source / "train0007.tfrecord", [frame_level_example(*make_videos(7, [2])[0]),
                                                  frame_level_example(*repeated)])
    expected = (rf"{(source / 'train0007.tfrecord').resolve()}: record 1: video id '{repeated[0]}' already appears "
                rf"in {(source / 'train0000.tfrecord').resolve()} record 1")
    with pytest.raises(DataError, match=expected):
        convert(str(source / "*.tfrecord"), tmp_path / "s.h5", workers=workers, progress=False)
    assert leftovers(tmp_path) == ["s.h5.lock", "src"]


def test_checksums_find_damage_inside_a_store(shards, tmp_path):
    source, contents = shards
    output = tmp_path / "s.h5"
    convert(str(source / "*.tfrecord"), output, progress=False)
    store = FrameStore(output)
    assert store.format == "vdistill-frame-store/2"
    # Independent truth: CRC32C of each video's first 300 frames as the shards hold them, rgb then audio per frame.
    expected = [crc32c.crc32c(np.concatenate([rgb, audio], axis=1)[:300].tobytes())
                for videos in contents for _, _, rgb, audio in videos]
    assert store.checksums.tolist() == expected
    assert store.verify() == []
    with h5py.File(output, "r") as f:
        frames_at = f["frames"].id.get_offset()
        offsets = f["offsets"][:]
    # Zero one frame of video 3 in place, as a lost disk block would.
    with open(output, "r+b") as f:
        f.seek(frames_at + int(offsets[3]) * 1152)
        f.write(bytes(1152))
    assert FrameStore(output).verify() == [3]


def _kill_while_writing(command: list[str], output: Path) -> list[int]:
    """Start ``command``, SIGKILL it as soon as its temporary store exists; returns the pids of its children."""
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 120
        while not list(output.parent.glob(f".{output.name}.tmp-*")):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the conversion never started writing"
            time.sleep(0.001)
        children = _children(process.pid)
        process.kill()
    assert not output.exists(), "killed too late: the store was already finished"
    return children


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find worker processes")
@pytest.mark.parametrize("workers", [1, 3])
def test_a_conversion_killed_while_writing_blocks_nothing(tmp_path, workers):
    rng = np.random.default_rng(3)
    source = tmp_path / "src"
    source.mkdir()
    for shard in range(3):  # ~60 MB of frames: the write takes long enough to be caught in it
        records = [frame_level_example(f"{shard}-{i}", [i], *random_video(rng, 300)) for i in range(60)]
        write_tfrecord(source / f"train{shard:04d}.tfrecord", records)
    output = tmp_path / "stores" / "train.h5"
    script = (f"from lightning_distill.data.convert import convert; "
              f"convert({str(source / '*.tfrecord')!r}, {str(output)!r}, workers={workers}, progress=False)")
    children = _kill_while_writing([sys.executable, "-c", script], output)
    assert len(children) == (workers if workers > 1 else 0)
    deadline = time.monotonic() + 10
    while any(_alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(child) for child in children), "workers outlived the killed conversion"
    # The rerun neither hangs (the lock is free) nor trusts the leftovers, and builds what an unbroken run builds.
    rerun = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    convert(str(source / "*.tfrecord"), tmp_path / "unbroken.h5", progress=False)
    assert store_contents(output) == store_contents(tmp_path / "unbroken.h5")
    assert sorted(p.name for p in output.parent.iterdir()) == ["train.h5", "train.h5.lock"]


def test_mixed_formats_are_refused(shards, tmp_path):
    source, _ = shards
    write_tfrecord(source / "train0005.tfrecord", [video_level_example("vv", [1], np.zeros(1024), np.zeros(128))])
    expected = "train0005.tfrecord: video-level 2018 records, but .*train0000.tfrecord holds frame-level"
    with pytest.raises(DataError, match=expected):
        convert(str(source / "*.tfrecord"), tmp_path / "s.h5", progress=False)


def test_leftovers_of_a_killed_run_are_removed(shards, tmp_path):
    source, _ = shards
    (tmp_path / ".train.h5.tmp-dead").write_bytes(b"partial")
    (tmp_path / ".train.h5.tmp-deaddir").mkdir()
    convert(str(source / "*.tfrecord"), tmp_path / "train.h5", progress=False)
    assert leftovers(tmp_path) == ["src", "train.h5", "train.h5.lock"]


def _convert_in_process(pattern: str, output: str, queue) -> None:
    queue.put(convert(pattern, output, progress=False).skipped)


def test_concurrent_conversions_convert_once(shards, tmp_path):
    source, _ = shards
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    args = (str(source / "*"), str(tmp_path / "s.h5"), queue)
    processes = [context.Process(target=_convert_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert sorted(queue.get(timeout=1) for _ in processes) == [False, True]


@needs_real_shards
def test_real_video_level_shards(tmp_path):
    result = convert([str(SHARED / "validate000*.tfrecord")], tmp_path / "v.h5", workers=2, progress=False)
    store = FrameStore(result.path)
    assert (len(store), store.level, store.dtype, store.max_frames) == (589, "video", np.float32, 1)
    payloads = framed_payloads(SHARED / "validate0000.tfrecord") + framed_payloads(SHARED / "validate0001.tfrecord")
    for index in (0, 283, 284, 588):
        feature = example_pb2.Example.FromString(payloads[index]).features.feature
        record = store[index]
        assert record.video_id == feature["id"].bytes_list.value[0].decode()
        assert record.labels.tolist() == list(feature["labels"].int64_list.value)
        assert np.array_equal(record.rgb[0], np.array(feature["mean_rgb"].float_list.value, np.float32))
        assert np.array_equal(record.audio[0], np.array(feature["mean_audio"].float_list.value, np.float32))


def test_converts_the_independent_benchmark_data_exactly(tmp_path):
    """benchmarks/independent_data.py writes with the tfrecord package (not our code); its reader is the truth."""
    source = tmp_path / "independent"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "independent_data.py"
    subprocess.run([sys.executable, str(script), "--output", str(source), "--train", "6", "--validate", "1",
                    "--test", "1", "--shards", "2", "--workers", "1"], check=True, capture_output=True)
    result = convert(str(source / "train*.tfrecord"), tmp_path / "train.h5", num_classes=64, progress=False)
    store = FrameStore(result.path)
    records = [
        record
        for shard in sorted(source.glob("train-*.tfrecord"))
        for record in tfrecord_reader.sequence_loader(str(shard), None)
    ]
    assert len(store) == len(records) == 6
    for i, (context, features) in enumerate(records):
        video = store[i]
        assert video.video_id == bytes(context["id"]).decode()
        assert video.labels.tolist() == context["labels"].tolist()
        for name, frames in (("rgb", video.rgb), ("audio", video.audio)):
            written = np.stack([np.frombuffer(frame, np.uint8) for frame in features[name]])
            assert np.array_equal(frames, written)
