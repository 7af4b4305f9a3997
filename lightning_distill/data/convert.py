"""Convert YouTube-8M TFRecord shards into one HDF5 frame store, atomically, idempotently and in parallel.

Conversion runs under an exclusive lock on ``<output>.lock`` (``atomic_files.exclusive``), so several processes
asked for the same store (``prepare_data`` on several nodes sharing a file system) convert it once: the others wait,
then find it up to date. The store records a manifest of its sources (resolved paths, sizes, modification
times) and options; a rerun whose manifest matches returns at once, any change rebuilds the store.

Two passes, each over the shards in parallel when ``workers > 1`` (worker processes, one shard per job):

1. Index: every record is checked (CRCs, structure, labels) and located (``index_shard``). Any bad record
   stops the conversion here, before a single output byte is written.
2. Write: the parent creates the temporary store with every table and a ``frames`` dataset of the exact size,
   allocated but unwritten; each shard's frames are then copied straight from the mapped shard into their own
   rows of it (``shard_frames``, ``FrameSlots.fill``), by the parent or by the workers, which own disjoint row
   ranges. The store is made durable and renamed into place only when complete.

So every frame is written once, and no spool file exists (spooling wrote every frame twice, then deleted a
file as large as the store). The price: the shards are read twice. Pass 1 touches every page of them (each
frame's header is checked), so a shard set larger than the page cache is read from disk twice.

Workers are forked, so one costs ~25 ms of CPU whatever the input (the parent has torch loaded): noise for a
real split, a visible share of a benchmark of a few hundred MB.

The temporary store starts with ``.<output name>.tmp-``: removed on any error, and any left by a killed run
are deleted by the next conversion of the same output (it holds the lock, so they are stale). Workers die with
the converting process and let go of the lock (``_orphan_proof``), so killing a conversion at any moment never
blocks the next one, which rebuilds the store from scratch.

Refused before anything is written, naming the file and record: damaged records (CRCs, structure), labels
outside the vocabulary, non-finite video-level features, and a video id that occurs twice in the shard set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from lightning_distill.atomic_files import exclusive, remove_stale_temporaries
from lightning_distill.data.frame_store import FORMAT, FrameSlots, FrameStore, VideoTable, building_frame_store
from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.data.tfrecord_reader import ShardIndex, SourceFormat, index_shard, shard_frames, sniff_format
from lightning_distill.errors import DataError

T = TypeVar("T")

# prctl option from <linux/prctl.h>: the signal a process gets when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` did.

    Attributes:
        path: the store.
        videos: videos in the store.
        skipped: True when the store was already up to date and nothing was written.
    """

    path: Path
    videos: int
    skipped: bool


def convert(
    inputs: str | Sequence[str],
    output: str | Path,
    *,
    workers: int = 1,
    verify_crc: bool = True,
    max_frames: int = MAX_FRAMES,
    num_classes: int | None = None,
    progress: bool = True,
) -> ConversionResult:
    """Convert TFRecord shards (frame- or video-level, 2017/2018/2019; detected) into a frame store.

    Args:
        inputs: TFRecord paths or glob patterns ('DIR/train*.tfrecord'); shards are taken in sorted path order,
            records in file order, whatever ``workers`` is.
        output: the store to write; its directory is created if missing.
        workers: shards converted in parallel processes.
        verify_crc: check both CRC32Cs of every record.
        max_frames: frames kept per video (the first ones).
        num_classes: label vocabulary size; None: the size declared beside the shards (``vdistill synth``
            declares its own), else 4716 for 2017 records, 3862 for 2018/2019 records.
        progress: show a progress bar (videos, MB/s of input, ETA).

    Raises:
        DataError: a pattern matches nothing, the output directory cannot be created, shards mix formats, a
            video id repeats, or a record is damaged or malformed (naming the file and record index). No store is left behind, and a previous
            store at ``output`` is left untouched.
    """
    shards = resolve_inputs(inputs)
    output = Path(output)
    if workers < 1 or max_frames < 1:
        raise DataError(f"workers ({workers}) and max_frames ({max_frames}) must be at least 1")
    # The class count as resolved (given, declared beside the shards, or the version's), so stores made with and
    # without an explicit count of the same vocabulary are the same store.
    if num_classes is None:
        num_classes = _first_format(shards, verify_crc).num_classes
    options = {"verify_crc": verify_crc, "max_frames": max_frames, "num_classes": num_classes}
    manifest = {"sources": [_describe(shard) for shard in shards], "options": options}
    _make_directory(output.parent)
    with exclusive(output) as lock:
        remove_stale_temporaries(output)
        if output.exists():
            previous = _up_to_date_store(output, manifest)
            if previous is not None:
                return ConversionResult(output, len(previous), skipped=True)
        source = replace(_shard_set_format(shards, verify_crc), num_classes=num_classes)
        total = sum(shard.stat().st_size for shard in shards)
        with _progress_bar(progress) as bar, _worker_pool(workers, len(shards), lock) as pool:
            index = partial(index_shard, source_format=source, verify_crc=verify_crc)
            indexes = list(_tracked(bar, "indexing", total, _run_jobs(index, [(s,) for s in shards], pool)))
            _check_unique_ids(indexes)
            kept = [np.minimum(i.lengths, max_frames) for i in indexes]
            first_rows = np.cumsum([0] + [int(k.sum()) for k in kept]).tolist()
            options = dict(level=source.level, source_version=source.version, num_classes=source.num_classes)
            table = _video_table(indexes, kept)
            first_videos = np.cumsum([0] + [len(i) for i in indexes]).tolist()
            with building_frame_store(output, table, **options, max_frames=max_frames, manifest=manifest) as slots:
                jobs = [(i, slots, row, video, k) for i, row, video, k in zip(indexes, first_rows, first_videos, kept)]
                for _ in _tracked(bar, "writing", total, _run_jobs(_write_shard, jobs, pool)):
                    pass
    return ConversionResult(output, len(table.video_ids), skipped=False)


def resolve_inputs(inputs: str | Sequence[str]) -> list[Path]:
    """Expand paths and glob patterns into a sorted, duplicate-free list of files.

    Raises:
        DataError: a pattern or path matches no file.
    """
    patterns = [inputs] if isinstance(inputs, str) else list(inputs)
    if not patterns:
        raise DataError("no input given; pass TFRecord paths or a glob such as 'DIR/train*.tfrecord'")
    shards: set[Path] = set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(str(pattern)) if Path(m).is_file()]
        if not matches:
            raise DataError(f"{pattern}: matches no file; check the path (quote globs so the shell leaves them)")
        shards.update(m.resolve() for m in matches)
    return sorted(shards)


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{directory}: cannot create the output directory ({error.strerror})") from None


def _describe(shard: Path) -> dict[str, Any]:
    stat = shard.stat()
    return {"path": str(shard), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _up_to_date_store(output: Path, manifest: dict[str, Any]) -> FrameStore | None:
    """The store at ``output`` if it is finished and was made from exactly these sources and options."""
    try:
        store = FrameStore(output)
    except DataError:
        return None  # unfinished or foreign: rebuild it
    # Round-trip through JSON so tuples and lists compare alike; an older format is rebuilt to gain checksums.
    return store if store.format == FORMAT and store.manifest == json.loads(json.dumps(manifest)) else None


def _first_format(shards: Sequence[Path], verify_crc: bool) -> SourceFormat:
    """The format of the first shard with records (DataError if none has any)."""
    for shard in shards:
        found = sniff_format(shard, verify_crc=verify_crc)
        if found is not None:
            return found
    raise DataError(f"{shards[0]}: no records in any of the {len(shards)} input shard(s); check the input glob")


def _shard_set_format(shards: Sequence[Path], verify_crc: bool) -> SourceFormat:
    """The common format of all shards (empty shards aside), checked before any conversion work.

    Raises:
        DataError: all shards are empty, or two shards differ in level or version.
    """
    found: tuple[Path, SourceFormat] | None = None
    for shard in shards:
        source = sniff_format(shard, verify_crc=verify_crc)
        if source is None:
            continue
        if found is None:
            found = (shard, source)
        elif source != found[1]:
            first, expected = found
            raise DataError(
                f"{shard}: {source.level}-level {source.version} records, but {first} holds {expected.level}-level "
                f"{expected.version} records; convert each kind into its own store"
            )
    if found is None:
        raise DataError(f"{shards[0]}: no records in any of the {len(shards)} input shard(s); check the input glob")
    return found[1]


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[videos]:,} videos"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


def _tracked(bar: Progress, description: str, total: int, indexes: Iterable[ShardIndex]) -> Iterator[ShardIndex]:
    """Pass shards' indexes through, advancing a new bar task by each shard's bytes and videos."""
    task = bar.add_task(description, total=total, videos=0)
    videos = 0
    for index in indexes:
        videos += len(index)
        bar.update(task, advance=index.stat[0], videos=videos)
        yield index


def _worker_pool(workers: int, shards: int, lock: int) -> ProcessPoolExecutor | nullcontext[None]:
    """Worker processes for both passes, or (``workers == 1``) a context giving None: work in this process.

    Args:
        workers: processes wanted.
        shards: jobs per pass (no more workers than that).
        lock: the descriptor of the output's lock, which the workers must not keep (see ``_orphan_proof``).
    """
    if workers == 1:
        return nullcontext()
    # fork: workers start with the imports done (spawning one would import torch again, for seconds).
    context = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(
        max_workers=min(workers, shards), mp_context=context, initializer=_orphan_proof, initargs=(os.getpid(), lock)
    )


def _orphan_proof(parent: int, lock: int) -> None:
    """Make a worker die with the converting process, and let go of the output's lock.

    A worker blocks reading its job queue; if the parent is killed (SIGKILL: no cleanup runs) the queue's pipe stays
    open in the sibling workers, so without this they would wait forever, each holding a forked copy of the lock:
    every later conversion of the same output would hang.
    """
    os.close(lock)  # the flock belongs to the parent's open file; the parent's copy keeps it held
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def _run_jobs(fn: Callable[..., T], jobs: Sequence[tuple], pool: ProcessPoolExecutor | None) -> Iterator[T]:
    """``fn(*job)`` for every job, in job order, computed in this process or by the pool's."""
    if pool is None:
        yield from (fn(*job) for job in jobs)
        return
    futures = [pool.submit(fn, *job) for job in jobs]
    try:
        for future in futures:
            yield future.result()
    finally:
        # On an error (here or in the consumer) drop the queued shards; the pool waits for running ones.
        for future in futures:
            future.cancel()


def _check_unique_ids(indexes: Sequence[ShardIndex]) -> None:
    """Raise ``DataError`` naming both records of the first video id that occurs twice in the shard set.

    A store holds each video once: a repeated video would be trained on twice as often, and counted twice by the
    metrics.
    """
    ids = [video_id for index in indexes for video_id in index.video_ids]
    if len(set(ids)) == len(ids):
        return
    seen: dict[str, tuple[Path, int]] = {}
    for index in indexes:
        for record, video_id in enumerate(index.video_ids):
            if video_id in seen:
                first_path, first_record = seen[video_id]
                raise DataError(
                    f"{index.path}: record {record}: video id {video_id!r} already appears in {first_path} record "
                    f"{first_record}; remove the duplicate (a store holds each video once)"
                )
            seen[video_id] = (index.path, record)


def _video_table(indexes: Sequence[ShardIndex], kept: Sequence[np.ndarray]) -> VideoTable:
    """The store's table of all shards' videos, in shard order, ``kept[i]`` frames of each video of shard i."""
    return VideoTable(
        [video_id for index in indexes for video_id in index.video_ids],
        np.concatenate(kept),
        np.concatenate([index.label_counts for index in indexes]),
        np.concatenate([index.label_values for index in indexes]).astype(np.int32),
    )


def _write_shard(
    index: ShardIndex, slots: FrameSlots, first_row: int, first_video: int, lengths: np.ndarray
) -> ShardIndex:
    """Copy a shard's frames into its rows of the store being built; returns the index, for progress."""
    slots.fill(first_row, first_video, lengths, shard_frames(index))
    return index
