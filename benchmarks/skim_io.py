"""Benchmark what k-frame reads and skims read from disk: bytes and seconds, before and after, side by side.

Two things decide how much of a frame store a k-frame model makes the operating system read from disk:

* **Read-ahead.** On a page fault in a memory map the kernel reads up to 128 KiB around the page, so k scattered
  frames of a video read most of its pages. The store now asks for exactly the pages its scattered rows lie on
  (``MADV_WILLNEED``, on a map advised ``MADV_RANDOM``; ``data/frame_store.py``). Rows "Uniform-k": a pass of
  Uniform-k frames read with the kernel's read-ahead (the store as before: this process maps it without advice)
  and with exact pages.
* **Skims.** A skim (``SkimSampler``) reads a few features of every frame, then k frames whole. A frame's 1152
  features share one row of the store, so reading a few of them reads every page; with the data module's
  ``skims_apart`` (the default) they come from a column store beside it (``data/column_store.py``). Rows "skim
  of ...": the features read from the store's rows, or from the column store with and without exact pages.

Each pass is one pass of the data module's test loader, in a fresh process, after the store and column store are
dropped from the page cache (``posix_fadvise(DONTNEED)``: their pages are clean, so the kernel drops them). It
reports the bytes the process read from disk (``read_bytes`` of ``/proc/self/io``: block I/O, page cache hits
excluded), its wall time, and the wall time of a second pass with everything in the page cache (what asking for
pages costs when nothing needs reading). The column store's one-time build is reported apart. Frames are scored
by their first skimmed feature: what a scorer computes does not change what is read.

    python benchmarks/skim_io.py --store data/independent/stores/test.h5 --k 6
    python benchmarks/skim_io.py   # a store of 2,000 random videos of 30-300 frames, written once
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lightning_distill.data.column_store import column_store_key, column_store_path, open_column_store
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data import frame_store
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.normalization import NoNormalization
from lightning_distill.data.samplers import ScoredSampler, UniformSampler
from lightning_distill.data.yt8m import FEATURE_DIM, RGB_DIM

from loader import ensure_store  # benchmarks/ is the script's directory

SKIMS = {
    "audio (128)": [[RGB_DIM, FEATURE_DIM]],
    "32 rgb + 32 audio": [[0, 32], [RGB_DIM, RGB_DIM + 32]],
    "64 rgb + audio (192)": [[0, 64], [RGB_DIM, FEATURE_DIM]],
}


class FirstSkimmedFeature(ScoredSampler):
    """Scores a frame by its first skimmed feature: reads what a skim of these ``columns`` reads."""

    def __init__(self, k: int, columns: list[list[int]]) -> None:
        super().__init__(k)
        self.columns = tuple(slice(a, b) for a, b in columns)

    def scores(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return frames[..., 0].float().masked_fill(~mask, float("-inf"))

    def selection_cost(self, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/vdistill-bench/skim_io.h5"),
                        help="a frame store (written with random videos if absent)")
    parser.add_argument("--videos", type=int, default=2000, help="videos of the store written when absent")
    parser.add_argument("--k", type=int, default=6, help="frames chosen per video, read whole")
    parser.add_argument("--batch", type=int, default=64, help="videos per batch")
    parser.add_argument("--threads", type=int, default=2, help="the data module's reader_threads (its default: 2)")
    parser.add_argument("--pass", dest="one_pass", help=argparse.SUPPRESS)  # internal: one measured pass (JSON)
    args = parser.parse_args(argv)
    if args.one_pass:
        print(json.dumps(measure_pass(args.store, args.k, args.batch, args.threads, **json.loads(args.one_pass))))
        return
    if not args.store.is_file():
        ensure_store(args.store, args.videos)
    store = FrameStore(args.store)
    size = os.path.getsize(args.store)
    print(f"{args.store}: {len(store):,} videos, {int(store.lengths.sum()):,} frames, {size / 2**20:,.0f} MiB; "
          f"k = {args.k}; reader threads {args.threads}; load average {os.getloadavg()[0]:.1f}\n")
    print("| frames chosen by | column store: size, one-time build | skimmed features read from | k frames read with "
          "| MiB read from disk | share of the store | wall s | wall s, a second pass (page cache) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    # The k frames alone, as a Uniform-k student reads them: with the read-ahead the store had before, and now.
    for read_ahead in (True, False):
        _drop_from_page_cache(args.store)
        run = _in_child(args, columns=None, apart=False, build_only=False, read_ahead=read_ahead)
        _row(f"Uniform-{args.k}", "-", "-", read_ahead, run, size)
    for name, columns in SKIMS.items():
        path = column_store_path(store.path, column_store_key(store, tuple(slice(a, b) for a, b in columns)))
        built = _in_child(args, columns=columns, apart=True, build_only=True, read_ahead=False)
        built_text = f"{os.path.getsize(path) / 2**20:,.0f} MiB, {built['build_seconds']:.1f} s"
        for apart, read_ahead in ((False, False), (True, True), (True, False)):
            _drop_from_page_cache(args.store, path)
            run = _in_child(args, columns=columns, apart=apart, build_only=False, read_ahead=read_ahead)
            _row(f"skim of {name}", built_text, "column store" if apart else "store rows", read_ahead, run, size)


def _row(chosen_by: str, built: str, skimmed_from: str, read_ahead: bool, run: dict, size: int) -> None:
    reads = "kernel read-ahead (before)" if read_ahead else "exact pages"
    print(f"| {chosen_by} | {built} | {skimmed_from} | {reads} | {run['read_bytes'] / 2**20:,.1f} | "
          f"{run['read_bytes'] / size:.3f} | {run['seconds']:.2f} | {run['warm_seconds']:.2f} |", flush=True)


def measure_pass(store: Path, k: int, batch: int, threads: int, columns: list[list[int]] | None, apart: bool,
                 build_only: bool, read_ahead: bool) -> dict:
    """One pass of the test loader (or just the column store's build): bytes read from disk and seconds.

    ``columns`` None reads Uniform-k frames; ``read_ahead`` reads k-frame views with the kernel's default read-ahead,
    as the store did before it asked for exact pages (this process only: before and after, side by side).
    """
    if build_only:
        built, _ = open_column_store(FrameStore(store), tuple(slice(a, b) for a, b in columns))
        return {"build_seconds": built.build_seconds}
    if read_ahead:  # the store read as on a system without madvise's advice, as it was before
        frame_store.mmap = SimpleNamespace(mmap=mmap.mmap, ACCESS_READ=mmap.ACCESS_READ, PAGESIZE=mmap.PAGESIZE)
    sampler = UniformSampler(k) if columns is None else FirstSkimmedFeature(k, columns)
    before, started = _read_bytes(), time.perf_counter()
    data = YT8MDataModule(test_files=str(store), batch_size=batch, num_workers=0, reader_threads=threads,
                          normalization=NoNormalization(), views={"student": sampler}, skims_apart=apart)
    data.setup("test")
    videos = sum(len(batch.video_ids) for batch in data.test_dataloader())
    cold = {"videos": videos, "read_bytes": _read_bytes() - before, "seconds": time.perf_counter() - started}
    started = time.perf_counter()  # again, everything now in the page cache: what asking for pages costs
    for _ in data.test_dataloader():
        pass
    return cold | {"warm_seconds": time.perf_counter() - started}


def _in_child(args: argparse.Namespace, **settings: object) -> dict:
    """``measure_pass`` in a fresh process: nothing of the store mapped or cached by an earlier pass."""
    command = [sys.executable, __file__, "--store", str(args.store), "--k", str(args.k), "--batch", str(args.batch),
               "--threads", str(args.threads), "--pass", json.dumps(settings)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _drop_from_page_cache(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_bytes() -> int:
    """Bytes this process has read from block devices (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes: this benchmark needs Linux")


if __name__ == "__main__":
    main()
