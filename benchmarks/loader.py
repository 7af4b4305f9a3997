"""Benchmark the training data path: DataLoader videos/s from a frame store, ours vs a naive per-sample reader.

Writes (or reuses) a synthetic frame store of random uint8 videos with lengths uniform in [30, 300], then
iterates shuffled DataLoaders with the same batch size and worker count, side by side:

* ``YT8MDataModule`` (whole-batch reads from the memory-mapped store): the teacher view (all frames, up to
  300), a Uniform-k student view, and both at once (distillation: one read, the student gathered from it),
  each read by worker processes and by reader threads of the training process;
* a naive ``Dataset`` returning one video per ``__getitem__`` through h5py, padded by a collate function
  (the student variant reads the whole video and keeps k frames, as a TFRecord pipeline must).

Worker processes pay for handing every batch over through shared memory; reader threads do not. Prints a
markdown table of steady-state videos/s (the first batches, worker start-up, are not timed) with the load
average, since the numbers depend on what else the machine runs. With the default 20,000 videos an epoch is
78 batches of 256: warm-up plus timed batches should stay within one epoch.

    python benchmarks/loader.py --videos 20000 --workers 2 --batch 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_distill.cli.allocator import keep_freed_memory
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.data.samplers import AllFramesSampler, FrameSampler, UniformSampler
from lightning_distill.data.yt8m import FEATURE_DIM, RGB_DIM

# The tests' store writer: benchmarks, like tests, build stores from in-memory records.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from store_writer import write_frame_store  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=20000, help="videos in the synthetic store")
    parser.add_argument("--batch", type=int, default=256, help="videos per batch")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, and reader threads")
    parser.add_argument("--k", type=int, default=30, help="frames per video in the student view")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per loader (after --warmup)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed batches first: worker start-up, and the process's heap growing to hold the batches in flight",
    )
    parser.add_argument("--store", default="/tmp/vdistill-bench/loader.h5", help="store path (reused if present)")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's default allocator instead of keep_freed_memory(), which every vdistill command sets",
    )
    args = parser.parse_args(argv)
    if not args.glibc_default:
        # Measure the loader as `vdistill fit` runs it (and its worker processes inherit it).
        keep_freed_memory()

    store = ensure_store(Path(args.store), args.videos)
    teacher, student = {"teacher": AllFramesSampler()}, {"student": UniformSampler(args.k)}
    k, w = args.k, args.workers
    runs = {}
    for name, views in (
        ("teacher (all frames)", teacher),
        (f"student (Uniform k={k})", student),
        (f"teacher + student k={k}", {**teacher, **student}),
    ):
        runs[f"YT8MDataModule, {name}, {w} workers"] = ours(store, views, args.batch, workers=w)
        runs[f"YT8MDataModule, {name}, {w} reader threads"] = ours(store, views, args.batch, threads=w)
    runs[f"naive per-sample h5py, teacher, {w} workers"] = naive(store, None, args.batch, w)
    runs[f"naive per-sample h5py, student k={k}, {w} workers"] = naive(store, student["student"], args.batch, w)
    size = store.stat().st_size / 2**30
    print(f"\n{args.videos} videos in {store} ({size:.1f} GiB), batch {args.batch}, {os.cpu_count()} CPUs")
    print("\n| loader | videos/s | frames MB/s | load average |\n|---|---:|---:|---:|")
    for name, loader in runs.items():
        load = os.getloadavg()[0]
        videos_per_s, megabytes_per_s = measure(loader, args.batches, args.warmup)
        print(f"| {name} | {videos_per_s:,.0f} | {megabytes_per_s:,.0f} | {load:.1f} |", flush=True)


def ensure_store(path: Path, videos: int) -> Path:
    """A store of ``videos`` random videos at ``path``, written unless one of that size is already there."""
    if path.is_file() and len(FrameStore(path)) == videos:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # Content does not matter for speed: slices of one random block stand in for videos, cheaply.
    pool = rng.integers(0, 256, (8192, FEATURE_DIM), dtype=np.uint8)

    def records() -> Iterator[VideoRecord]:
        for i, length in enumerate(rng.integers(30, 301, size=videos)):
            start = int(rng.integers(0, len(pool) - length))
            rows = pool[start : start + length]
            yield VideoRecord(f"v{i:06d}", rng.integers(0, 3862, size=3), rows[:, :RGB_DIM], rows[:, RGB_DIM:])

    started = time.perf_counter()
    write_frame_store(path, records(), level="frame", source_version="2018", num_classes=3862)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    return path


def ours(
    store: Path, views: dict[str, FrameSampler], batch_size: int, workers: int = 0, threads: int = 0
) -> DataLoader:
    dm = YT8MDataModule(
        train_files=str(store),
        batch_size=batch_size,
        num_workers=workers,
        reader_threads=threads,
        val_fraction=0.0,
        views=views,
    )
    dm.setup("fit")
    return dm.train_dataloader()


class NaiveDataset(Dataset):
    """One video per item through h5py, the way a per-sample Dataset over the store would read it."""

    def __init__(self, path: Path, sampler: FrameSampler | None) -> None:
        self.path = path
        self.sampler = sampler
        with h5py.File(path, "r") as f:
            self.offsets = f["offsets"][:]
            self.num_classes = int(f.attrs["num_classes"])
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._file is None:  # opened in the worker, never shared across a fork
            self._file = h5py.File(self.path, "r")
        frames = torch.from_numpy(self._file["frames"][self.offsets[i] : self.offsets[i + 1]])
        if self.sampler is not None:
            frames = frames[self.sampler.indices(torch.tensor([len(frames)]))[0]]
        start, end = self._file["label_offsets"][i : i + 2]
        labels = torch.zeros(self.num_classes)
        labels[torch.from_numpy(self._file["label_values"][start:end].astype(np.int64))] = 1
        return frames, labels


def pad(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frames, labels = zip(*items)
    lengths = torch.tensor([len(f) for f in frames])
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths, torch.stack(labels)


def naive(store: Path, sampler: FrameSampler | None, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        NaiveDataset(store, sampler),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=pad,
        persistent_workers=workers > 0,
    )


def measure(loader: DataLoader, batches: int, warmup: int) -> tuple[float, float]:
    """Steady-state (videos/s, MB/s of frames) over ``batches`` batches after ``warmup`` untimed ones."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    videos = nbytes = 0
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if isinstance(batch, tuple):
            videos += len(batch[0])
            nbytes += batch[0].nbytes
        else:
            videos += len(batch)
            nbytes += sum(v.frames.nbytes for v in batch.views.values())
    elapsed = time.perf_counter() - started
    del iterator  # stops the workers
    return videos / elapsed, nbytes / elapsed / 1e6


if __name__ == "__main__":
    main()
