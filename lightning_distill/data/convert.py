"""Convert YouTube-8M TFRecord shards into one HDF5 frame store, atomically, idempotently and in parallel.

Conversion runs under an exclusive lock on ``<output>.lock`` (``fcntl.flock``), so several processes asked for
the same store (``prepare_data`` on several nodes sharing a file system) convert it once: the others wait,
then find it up to date. The store records a manifest of its sources (resolved paths, sizes, modification
times) and options; a rerun whose manifest matches returns at once, any change rebuilds the store.

Each shard is parsed (by a worker process when ``workers > 1``) into a raw spool file beside the output; the
parent then assembles the spools, in sorted shard order, into a temporary store that is renamed into place
only when complete. Temporary files start with ``.<output name>.tmp-``: removed on any error, and any left
by a killed run are deleted by the next conversion of the same output (it holds the lock, so they are stale).
"""

from __future__ import annotations

import fcntl
import glob
import json
import multiprocessing
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from lightning_distill.data.frame_store import FrameStore, SpooledVideos, assemble_frame_store, spool_videos
from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.data.yt8m_records import SourceFormat, read_records, sniff_format
from lightning_distill.errors import DataError


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
        output: the store to write; its directory must exist.
        workers: shards converted in parallel processes.
        verify_crc: check both CRC32Cs of every record.
        max_frames: frames kept per video (the first ones).
        num_classes: label vocabulary size; None: 4716 for 2017 records, 3862 for 2018/2019 records.
        progress: show a progress bar (videos, MB/s of input, ETA).

    Raises:
        DataError: a pattern matches nothing, the output directory is missing, shards mix formats, or a record
            is damaged or malformed (naming the file and record index). No store is left behind, and a previous
            store at ``output`` is left untouched.
    """
    shards = resolve_inputs(inputs)
    output = Path(output)
    if not output.parent.is_dir():
        raise DataError(f"{output}: output directory {output.parent} does not exist; create it first")
    if workers < 1 or max_frames < 1:
        raise DataError(f"workers ({workers}) and max_frames ({max_frames}) must be at least 1")
    options = {"verify_crc": verify_crc, "max_frames": max_frames, "num_classes": num_classes}
    manifest = {"sources": [_describe(shard) for shard in shards], "options": options}
    with _exclusive(output):
        _remove_stale_temporaries(output)
        if output.exists():
            previous = _up_to_date_store(output, manifest)
            if previous is not None:
                return ConversionResult(output, len(previous), skipped=True)
        source = _shard_set_format(shards, verify_crc)
        if num_classes is not None:
            source = replace(source, num_classes=num_classes)
        with tempfile.TemporaryDirectory(prefix=f".{output.name}.tmp-", dir=output.parent) as spool_dir:
            parts = _spool_shards(shards, Path(spool_dir), source, verify_crc, max_frames, workers, progress)
            videos = assemble_frame_store(
                output,
                parts,
                level=source.level,
                source_version=source.version,
                num_classes=source.num_classes,
                max_frames=max_frames,
                manifest=manifest,
            )
    return ConversionResult(output, videos, skipped=False)


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


def _describe(shard: Path) -> dict[str, Any]:
    stat = shard.stat()
    return {"path": str(shard), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@contextmanager
def _exclusive(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<output>.lock`` (blocking until other converters of ``output`` finish).

    The lock file stays: deleting it would let a waiting process lock a file a newcomer no longer sees.
    """
    with open(output.with_name(output.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_temporaries(output: Path) -> None:
    for stale in output.parent.glob(f".{glob.escape(output.name)}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _up_to_date_store(output: Path, manifest: dict[str, Any]) -> FrameStore | None:
    """The store at ``output`` if it is finished and was made from exactly these sources and options."""
    try:
        store = FrameStore(output)
    except DataError:
        return None  # unfinished or foreign: rebuild it
    # Round-trip through JSON so tuples and lists compare alike.
    return store if store.manifest == json.loads(json.dumps(manifest)) else None


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


def _spool_shards(
    shards: Sequence[Path],
    spool_dir: Path,
    source: SourceFormat,
    verify_crc: bool,
    max_frames: int,
    workers: int,
    progress: bool,
) -> list[SpooledVideos]:
    """Spool every shard (in parallel when ``workers > 1``); returns the parts in shard order."""
    jobs = [(shard, spool_dir / f"{i:06d}.frames", source, verify_crc, max_frames) for i, shard in enumerate(shards)]
    bar = Progress(
        TextColumn("converting"),
        BarColumn(),
        TextColumn("{task.fields[videos]:,} videos"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not progress,
    )
    task = bar.add_task("convert", total=sum(shard.stat().st_size for shard in shards), videos=0)
    parts: list[SpooledVideos] = []
    videos = 0
    with bar:
        for shard, part in zip(shards, _run_jobs(jobs, workers)):
            parts.append(part)
            videos += len(part.video_ids)
            bar.update(task, advance=shard.stat().st_size, videos=videos)
    return parts


def _run_jobs(jobs: Sequence[tuple], workers: int) -> Iterator[SpooledVideos]:
    """``_spool_shard`` results in job order, computed in this process or by ``workers`` processes."""
    if workers == 1:
        yield from (_spool_shard(*job) for job in jobs)
        return
    # fork: workers start in milliseconds with the imports done; they only read shards and write spools.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(_spool_shard, *job) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:
            # On an error (here or in the consumer) drop the queued shards; the pool waits for running ones.
            for future in futures:
                future.cancel()


def _spool_shard(
    shard: Path, frames_path: Path, source: SourceFormat, verify_crc: bool, max_frames: int
) -> SpooledVideos:
    records = read_records(shard, verify_crc=verify_crc, source_format=source)
    return spool_videos(records, frames_path, level=source.level, num_classes=source.num_classes, max_frames=max_frames)
