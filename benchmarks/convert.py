"""Benchmark TFRecord conversion and frame-store reads; prints markdown tables.

Conversion, side by side on the same frame-level shards (random uint8 content, written here):
  (a) the ``tfrecord`` package's ``sequence_loader``, iterating every record and joining its frames into
      (n, 1024) / (n, 128) arrays (it yields one bytes object per frame),
  (b) our reader alone (``read_records``, CRCs verified, frames copied into contiguous arrays),
  (c) ``index_shard`` alone: the first of ``convert``'s two passes (CRCs and structure checked, frames located),
  (d) our full ``convert`` with workers=1 and (e) workers=2 (CRCs verified, store written and fsynced).
The methods take turns, one run each per round, so a machine shared with other work loads them alike; the
best wall time of the rounds is reported, with the median CPU time (user + system, worker processes included),
and the load average before and after, since a loaded machine slows wall times, not CPU times.
Store reads: batches of the teacher view (all frames) and a student view (k uniform frames) through
``FrameStore.read_frames`` (memory map of the contiguous dataset) vs h5py fancy indexing of a chunked copy.

    python benchmarks/convert.py --shards 4 --videos 200 --frames 160
"""

from __future__ import annotations

import argparse
import os
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import crc32c
import h5py
import numpy as np
from tfrecord import example_pb2
from tfrecord.reader import sequence_loader

from lightning_distill.data.convert import convert
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.tfrecord_reader import detect_format, index_shard, read_records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4, help="frame-level shards to write")
    parser.add_argument("--videos", type=int, default=200, help="videos per shard")
    parser.add_argument("--frames", type=int, default=160, help="mean frames per video (uniform +-50%%)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the best is reported")
    parser.add_argument("--batch", type=int, default=256, help="videos per batch in the store read benchmark")
    parser.add_argument("--k", type=int, default=30, help="frames per video in the student view")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        shards = write_shards(Path(work), args.shards, args.videos, args.frames)
        convert_table(shards, Path(work), args.repeats)
        store_table(Path(work) / "store.h5", args.batch, args.k, args.repeats)


def write_shards(directory: Path, shards: int, videos: int, frames: int) -> list[Path]:
    """Frame-level 2018 shards of random videos, serialized with protobuf and framed by hand."""
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = directory / f"train{s:04d}.tfrecord"
        with open(path, "wb") as f:
            for v in range(videos):
                n = int(rng.integers(frames // 2, frames * 3 // 2 + 1))
                example = example_pb2.SequenceExample()
                example.context.feature["id"].bytes_list.value.append(f"{s:02d}{v:02x}"[-4:].encode())
                example.context.feature["labels"].int64_list.value.extend(rng.integers(0, 3862, 3).tolist())
                for key, dim in (("rgb", 1024), ("audio", 128)):
                    feature_list = example.feature_lists.feature_list[key]
                    for row in rng.integers(0, 256, (n, dim), dtype=np.uint8):
                        feature_list.feature.add().bytes_list.value.append(row.tobytes())
                f.write(_framed(example.SerializeToString()))
        paths.append(path)
    return paths


def convert_table(shards: list[Path], work: Path, repeats: int) -> None:
    videos = sum(1 for shard in shards for _ in read_records(shard))
    megabytes = sum(shard.stat().st_size for shard in shards) / 1e6
    store = work / "store.h5"
    source = detect_format(shards[0])

    def baseline() -> None:
        for shard in shards:
            for context, features in sequence_loader(
                str(shard),
                None,
                context_description={"id": "byte", "labels": "int"},
                features_description={"rgb": "byte", "audio": "byte"},
            ):
                # It yields one bytes object per frame: joining them is the least a user must do for arrays.
                np.frombuffer(b"".join(features["rgb"]), np.uint8).reshape(-1, 1024)
                np.frombuffer(b"".join(features["audio"]), np.uint8).reshape(-1, 128)

    def reader() -> None:
        for shard in shards:
            for record in read_records(shard):
                # Views into the mapped shard: copy them, as (a) copies its frames when joining them.
                np.ascontiguousarray(record.rgb), np.ascontiguousarray(record.audio)

    def first_pass() -> None:
        for shard in shards:
            index_shard(shard, source)

    def ours(workers: int) -> Callable[[], None]:
        return lambda: convert([str(s) for s in shards], store, workers=workers, progress=False)

    def no_store() -> None:
        store.unlink(missing_ok=True)  # else the rerun is a no-op; not timed

    methods = {
        "(a) tfrecord.sequence_loader": (baseline, 1),
        "(b) read_records": (reader, 1),
        "(c) index_shard (convert's pass 1)": (first_pass, 1),
        "(d) convert, workers=1": (ours(1), 1),
        "(e) convert, workers=2": (ours(2), 2),
    }
    load_before = os.getloadavg()
    timings = take_turns({name: fn for name, (fn, _) in methods.items()}, no_store, repeats)
    base = timings["(a) tfrecord.sequence_loader"][0]
    print(f"\n{len(shards)} shards, {videos} videos, {megabytes:.0f} MB of TFRecords; best of {repeats} turns")
    print(f"load average (1, 5, 15 min) on {os.cpu_count()} cores: {_load(load_before)} before, {_load()} after\n")
    print("| method | s | videos/s | MB/s | MB/s per core | speed-up vs (a) | CPU s | MB per CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, cores) in methods.items():
        s, cpu = timings[name]
        print(
            f"| {name} | {s:.3f} | {videos / s:,.0f} | {megabytes / s:,.0f} | {megabytes / s / cores:,.0f} "
            f"| {base / s:.1f}x | {cpu:.3f} | {megabytes / cpu:,.0f} |"
        )


def take_turns(
    methods: dict[str, Callable[[], object]], setup: Callable[[], object], repeats: int
) -> dict[str, tuple[float, float]]:
    """(best wall seconds, median CPU seconds) of each method, running them in turn ``repeats`` times.

    CPU time is this process's and its finished children's, user + system; ``setup`` runs untimed before
    every run. One untimed warm-up round fills the page cache and imports.
    """
    walls: dict[str, list[float]] = {name: [] for name in methods}
    cpus: dict[str, list[float]] = {name: [] for name in methods}
    for turn in range(repeats + 1):
        for name, fn in methods.items():
            setup()
            cpu, start = _cpu_seconds(), time.perf_counter()
            fn()
            if turn:
                walls[name].append(time.perf_counter() - start)
                cpus[name].append(_cpu_seconds() - cpu)
    return {name: (min(walls[name]), float(np.median(cpus[name]))) for name in methods}


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _load(average: tuple[float, float, float] | None = None) -> str:
    return ", ".join(f"{x:.2f}" for x in average or os.getloadavg())


def store_table(path: Path, batch: int, k: int, repeats: int) -> None:
    store = FrameStore(path)
    rng = np.random.default_rng(1)
    videos = rng.choice(len(store), size=min(batch, len(store)), replace=False)
    lengths = store.lengths[videos]
    teacher = np.where(np.arange(lengths.max()) < lengths[:, None], np.arange(lengths.max()), -1)
    student = np.round(np.linspace(0, 1, k) * (lengths[:, None] - 1)).astype(np.int64)
    chunked = path.with_name("chunked.h5")
    with h5py.File(path, "r") as src, h5py.File(chunked, "w") as dst:
        dst.create_dataset("frames", data=src["frames"][:], chunks=(64, src["frames"].shape[1]))
    offsets = np.concatenate([[0], np.cumsum(store.lengths)])

    def h5py_gather(frames: np.ndarray) -> Callable[[], None]:
        def run() -> None:
            with h5py.File(chunked, "r") as f:
                rows = (offsets[videos, None] + frames)[frames >= 0]
                unique, inverse = np.unique(rows, return_inverse=True)
                f["frames"][unique][inverse]

        return run

    print(f"\nstore reads: {len(videos)} videos per batch, best of {repeats}\n")
    print("| view | contiguous + memmap (read_frames) | chunked (64 rows) + h5py | videos/s (read_frames) |")
    print("|---|---|---|---|")
    for name, frames in (("teacher (all frames)", teacher), (f"student (k={k})", student)):
        fast = best_time(lambda: store.read_frames(videos, frames), repeats)
        slow = best_time(h5py_gather(frames), repeats)
        print(f"| {name} | {fast * 1e3:.1f} ms | {slow * 1e3:.1f} ms | {len(videos) / fast:,.0f} |")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page cache, imports, worker start-up paths
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _framed(data: bytes) -> bytes:
    def masked(chunk: bytes) -> int:
        crc = crc32c.crc32c(chunk)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


if __name__ == "__main__":
    sys.exit(main())
