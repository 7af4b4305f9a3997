"""``vdistill convert | synth | inspect``: data preparation commands (thin wrappers over the data package).

These take no model or trainer, so they are plain jsonargparse commands (``--help``, ``--config``,
``--print_config`` like every other vdistill command) rather than LightningCLI subcommands, and import neither
torch nor Lightning.
"""

from __future__ import annotations

import json
from inspect import signature as inspect_signature
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lightning_distill.data.convert import convert as convert_records
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.synthetic import generate
from lightning_distill.errors import DataError


def convert(
    *,
    input: str,
    output: str,
    workers: int = 1,
    verify_crc: bool = True,
    max_frames: int = 300,
    num_classes: int | None = None,
) -> None:
    """Convert YouTube-8M TFRecords (frame- or video-level, 2017/2018/2019) into one HDF5 frame store.

    Conversion is atomic and idempotent: rerunning with unchanged inputs does nothing.

    Args:
        input: TFRecord files: a glob such as 'DIR/train*.tfrecord' (quote it), or several separated by commas.
        output: path of the store to write, e.g. stores/train.h5 (its directory is created if missing).
        workers: shards converted in parallel processes.
        verify_crc: check the CRC32C of every record (about 30% of the cost; keep it on for downloaded data).
        max_frames: frames kept per video (the official readers keep the first 300).
        num_classes: label vocabulary size; default: the size declared beside the shards (``vdistill synth``
            writes its own in vocabulary.json), else 3862 for 2018+ records, 4716 for 2017 records.
    """
    patterns = [p.strip() for p in input.split(",") if p.strip()]
    convert_records(
        patterns,
        output,
        workers=workers,
        verify_crc=verify_crc,
        max_frames=max_frames,
        num_classes=num_classes,
    )
    inspect(store=output)


def _generate_default(name: str):
    """``generate``'s own default, so the command and the function never disagree."""
    return inspect_signature(generate).parameters[name].default


def synth(
    *,
    output: str,
    train_videos: int = _generate_default("train_videos"),
    validate_videos: int = _generate_default("validate_videos"),
    test_videos: int = _generate_default("test_videos"),
    num_classes: int = _generate_default("num_classes"),
    min_frames: int = _generate_default("min_frames"),
    max_frames: int = _generate_default("max_frames"),
    shards_per_split: int = _generate_default("shards_per_split"),
    seed: int = _generate_default("seed"),
    unlabelled_test: bool = _generate_default("unlabelled_test"),
    missing_labels: float = _generate_default("missing_labels"),
    spurious_labels: float = _generate_default("spurious_labels"),
) -> None:
    """Write synthetic YouTube-8M frame-level TFRecords (2018 format) whose labels are evidenced by timed events.

    Args:
        output: directory for the train*/validate*/test* .tfrecord shards (created if missing).
        train_videos: videos in the train split.
        validate_videos: videos in the validate split.
        test_videos: videos in the test split.
        num_classes: label vocabulary size (recorded beside the shards in vocabulary.json, so `vdistill convert`
            and training read it without being told).
        min_frames: shortest video, in one-second frames.
        max_frames: longest video, in one-second frames.
        shards_per_split: TFRecord files per split.
        seed: random seed; the same seed writes byte-identical files.
        unlabelled_test: write the test split without labels, like the official one.
        missing_labels: label noise: probability that a true label is left out of a train/validate record (the
            test split stays exact).
        spurious_labels: label noise: expected wrong labels added to each train/validate record.
    """
    files = generate(
        output,
        train_videos=train_videos,
        validate_videos=validate_videos,
        test_videos=test_videos,
        num_classes=num_classes,
        min_frames=min_frames,
        max_frames=max_frames,
        shards_per_split=shards_per_split,
        seed=seed,
        unlabelled_test=unlabelled_test,
        missing_labels=missing_labels,
        spurious_labels=spurious_labels,
    )
    console = Console()
    for split, paths in files.items():
        console.print(f"{split}: {len(paths)} shard(s) in {Path(output).resolve()}")
    noise = Path(output) / "label_noise.json"
    if noise.is_file():
        rates = json.loads(noise.read_text())
        console.print(
            f"label noise (train, validate): {rates['missing_labels']:.1%} of true labels left out, "
            f"{rates['spurious_labels_per_video']:.2f} wrong labels per video added; the test split is exact"
        )


def inspect(*, store: str, verify: bool = False) -> None:
    """Summarise a frame store: videos, frames, lengths, labels, source format and size on disk.

    Args:
        store: path of a store written by ``vdistill convert``.
        verify: also read every frame and check each video against its stored CRC32C (finds damage such as
            zeroed blocks); exits with an error naming the first damaged video.
    """
    frames = FrameStore(store)
    lengths = frames.lengths
    label_counts = frames.label_counts
    table = Table(title=f"frame store {store}", show_header=False)
    rows = {
        "videos": f"{len(frames):,}",
        "frames": f"{int(lengths.sum()):,}",
        "frames per video (min / mean / max)": f"{lengths.min()} / {lengths.mean():.1f} / {lengths.max()}",
        "level": frames.level,
        "source version": frames.source_version,
        "classes": f"{frames.num_classes:,}",
        "labels per video (mean)": f"{label_counts.mean():.2f}",
        "unlabelled videos": f"{int((label_counts == 0).sum()):,}",
        "size on disk": f"{Path(store).stat().st_size / 2**20:,.1f} MiB",
        "format": frames.format,
    }
    if verify:
        rows["checksums"] = _verified(frames)
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)


def _verified(frames: FrameStore) -> str:
    """"all N videos match", or DataError naming the damaged videos."""
    with Progress(*Progress.get_default_columns(), transient=True) as progress:
        task = progress.add_task("verifying", total=len(frames))
        bad = frames.verify(lambda done: progress.advance(task, done))
    if bad:
        first = bad[0]
        raise DataError(
            f"{frames.path}: {len(bad):,} of {len(frames):,} videos do not match their checksums (first: video "
            f"{first}, {frames.video_ids[first]!r}); the store is damaged: convert it again"
        )
    return f"all {len(frames):,} videos match"

