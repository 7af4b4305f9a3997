"""Whole-batch reading from a frame store: the batch sampler, Dataset and DataLoader behind ``YT8MDataModule``.

Reading one video at a time costs a Python call, an HDF5 selection and a collate per video (about 4k videos/s
through two workers). Here the DataLoader's *sampler* yields ``BatchRequest``s (``batch_size=None`` turns off
automatic batching) and ``VideoBatchDataset[request]`` answers each with one ``read_frames`` call and one
``multi_hot`` call, so per-video Python is limited to looking up ids.

Every request carries the seed of its random frame draws, derived from ``(seed, epoch, batch number)``: the
frames a batch sees do not depend on worker processes, reader threads or ranks, change every training epoch,
and stay fixed at evaluation (where the epoch is not used).

Distributed runs: ``VideoBatchSampler`` splits the batches between ranks itself, so Lightning keeps it instead of
wrapping it in its ``DistributedSampler``, which pads every rank's share with repeated items: at evaluation
that counted some videos twice in the metrics. Training shares are padded (every rank must take the same number
of steps); evaluation shares are contiguous runs of batches, unpadded, so across ranks every video is scored once,
in the order a single process scores them.

``ThreadedDataLoader`` is resumable (``state_dict``/``load_state_dict``): a fit restored from a mid-epoch
checkpoint continues the epoch's batch order where it stopped, rather than starting the epoch over.

Worker processes hand every batch to the training process through shared memory, which costs more than the
read for the teacher view (48 MB per batch of 256). ``ThreadedDataLoader`` reads in threads of the training
process instead: the store reads release the GIL, and nothing is copied between processes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import FrameSampler, ScoredSampler
from lightning_distill.data.target_cache import TargetCache


class BatchRequest(NamedTuple):
    """One batch to read.

    Attributes:
        positions: positions (into the split's video list) of the batch's videos.
        seed: seed of the batch's random frame draws.
    """

    positions: list[int]
    seed: int


class VideoBatchSampler(DistributedSampler):
    """Batches of positions 0 .. num_videos - 1, reshuffled every epoch or in order, this rank's share of them.

    The batches are those of a single process (consecutive slices of the epoch's order, the last one possibly
    smaller), numbered globally; rank r of W takes, when shuffling (training), batches r, r + W, ... of the batch
    list padded with its first batches to a multiple of W, and otherwise (evaluation) the r-th of W contiguous,
    unpadded runs of batches. A ``DistributedSampler`` only so that Lightning leaves it in place.

    Args:
        num_videos: positions to cover.
        batch_size: positions per batch.
        shuffle: permute the positions, and draw frames anew, every epoch (training); otherwise the batches
            and their frame draws are the same every time (evaluation).
        seed: base seed of the permutation and of the frame draws.
        num_replicas: W, the ranks sharing the batches (1 without distribution).
        rank: this process's rank in [0, W).
    """

    def __init__(
        self, num_videos: int, batch_size: int, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        # Not DistributedSampler.__init__: it counts videos (and may ask torch.distributed for the world);
        # this sampler's items are batches, shared as the docstring says.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_videos = num_videos
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = False
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = epoch

    def skip_once(self, batches: int) -> None:
        """Have the next pass leave out its first ``batches`` batches (a resumed fit)."""
        self._skip = batches

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch = self.epoch if self.shuffle else 0
        if self.shuffle:
            order = torch.randperm(self.num_videos, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.num_videos)
        batches = order.split(self.batch_size)
        skip, self._skip = self._skip, 0
        for number in self._share(len(batches))[skip:]:
            seed = int(np.random.SeedSequence([self.seed, epoch, number]).generate_state(1)[0])
            yield BatchRequest(batches[number].tolist(), seed)

    def __len__(self) -> int:
        return len(self._share(math.ceil(self.num_videos / self.batch_size)))

    def _share(self, num_batches: int) -> range | list[int]:
        """The global numbers of this rank's batches, in the order it reads them."""
        if self.num_replicas == 1:
            return range(num_batches)
        if self.shuffle:
            padded = math.ceil(num_batches / self.num_replicas) * self.num_replicas
            return [number % num_batches for number in range(self.rank, padded, self.num_replicas)]
        return range(num_batches * self.rank // self.num_replicas, num_batches * (self.rank + 1) // self.num_replicas)


class VideoBatchDataset(Dataset[VideoBatch]):
    """The videos of one split, read a batch at a time with the frames each view asks for.

    When one view takes every frame (a ``FrameSampler`` with ``k`` None, the teacher view), only it is read
    and the other views are gathered from it in memory; otherwise each view reads just its own frames.

    Args:
        store: the split's frame store.
        videos: (N,) int64 store indices of this split's videos (a validation carve-out uses a subset).
        views: view name -> sampler.
        max_frames: lengths are capped here, so the teacher view has T <= max_frames.
        targets: teachers' cached outputs to attach to every batch, one entry per teacher (none: no targets).
    """

    def __init__(
        self,
        store: FrameStore,
        videos: np.ndarray,
        views: Mapping[str, FrameSampler],
        max_frames: int,
        targets: Sequence[TargetCache] = (),
    ) -> None:
        self.store = store
        self.videos = videos
        self.views = dict(views)
        self.max_frames = max_frames
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, request: BatchRequest) -> VideoBatch:
        """The requested videos, in store order, with every view's frames, labels and lengths (uint8 frames)."""
        # Sorted store indices make the reads walk forwards through the file.
        videos = np.sort(self.videos[request.positions])
        lengths = torch.from_numpy(np.minimum(self.store.lengths[videos], self.max_frames))
        generator = torch.Generator().manual_seed(request.seed)
        indices = {
            name: sampler.indices(lengths, generator)
            for name, sampler in self.views.items()
            if not isinstance(sampler, ScoredSampler)
        }
        frames = self._read(videos, lengths, indices)
        return VideoBatch(
            video_ids=[self.store.video_ids[i] for i in videos],
            labels=torch.from_numpy(self.store.multi_hot(videos)),
            lengths=lengths,
            views={
                name: FrameView(frames=torch.from_numpy(frames[name]), mask=index >= 0, positions=index)
                for name, index in indices.items()
            },
            indices=torch.from_numpy(videos),
            targets=[
                {name: torch.from_numpy(rows) for name, rows in cache.read(videos).items()} for cache in self.targets
            ]
            or None,
        )

    def _read(
        self, videos: np.ndarray, lengths: torch.Tensor, indices: dict[str, torch.Tensor]
    ) -> dict[str, np.ndarray]:
        """View name -> (B, T, D) frames, zero at padding, with one store read per batch where possible.

        Views of a ``ScoredSampler`` get their ``indices`` entry here: chosen from the features it scores of the
        frames it skims, then read whole.
        """
        every_frame = every_frame_view(self.views)
        full = self.store.read_frames(videos, indices[every_frame].numpy()) if every_frame else None
        for name, sampler in self.views.items():
            if not isinstance(sampler, ScoredSampler):
                continue
            skimmed = sampler.skimmed_positions(lengths)
            if full is not None:
                # Slot t of the full view is frame t: a skim of every frame reads it as it is, without a copy.
                every = skimmed.shape == indices[every_frame].shape and torch.equal(skimmed, indices[every_frame])
                source = full if every else _gather(full, skimmed.numpy())
                seen = sampler.side_by_side(lambda columns, source=source: source[..., columns])
            else:  # only the features scoring needs, of the frames it skims
                seen = sampler.side_by_side(
                    lambda columns, frames=skimmed.numpy(): self.store.read_frames(videos, frames, columns)
                )
            indices[name] = sampler.indices_from_frames(lengths, skimmed, torch.from_numpy(seen))
        if full is None:
            return {name: self.store.read_frames(videos, index.numpy()) for name, index in indices.items()}
        return {name: full if name == every_frame else _gather(full, index.numpy()) for name, index in indices.items()}


class ThreadedDataLoader(DataLoader):
    """A resumable ``DataLoader`` that, with ``reader_threads > 0`` (and ``num_workers=0``), reads batches ahead in
    threads.

    Batches come out in sampler order, at most ``reader_threads + prefetch`` read ahead. Lightning can still
    swap its distributed sampler in: the class takes every ``DataLoader`` argument.

    ``state_dict`` records how many batches of the current epoch were handed out (not read ahead); after
    ``load_state_dict`` the next pass over that epoch starts after them. Needs a ``VideoBatchSampler``.

    Args:
        dataset: passed to ``DataLoader``.
        reader_threads: threads reading batches; 0 behaves exactly like ``DataLoader``.
        prefetch: batches read ahead beyond those in progress.
        **kwargs: passed to ``DataLoader``.
    """

    def __init__(self, dataset: Dataset, reader_threads: int = 0, prefetch: int = 2, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        if reader_threads and self.num_workers:
            raise ValueError("reader_threads and num_workers exclude each other; set one of them to 0")
        self.reader_threads = reader_threads
        self.prefetch = prefetch
        self._handed_out = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._handed_out_batches()

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": n}``: n batches of epoch e were handed out."""
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Have the next pass, if it is over epoch ``state["epoch"]``, start after its first ``state["batches"]``."""
        self._resume = dict(state)

    def _handed_out_batches(self) -> Iterator[Any]:
        # A generator, so this runs at the first next(): Lightning makes a resumed fit's iterator before it sets
        # the sampler's epoch.
        resume, self._resume = self._resume, None
        self._handed_out = 0
        if resume is not None and resume["epoch"] == self.sampler.epoch:
            # A checkpoint saved at an epoch's end names that epoch; the fit then resumes with the next one.
            self._handed_out = resume["batches"]
            self.sampler.skip_once(resume["batches"])
        for batch in self._read_ahead() if self.reader_threads else super().__iter__():
            self._handed_out += 1
            yield batch

    def _read_ahead(self) -> Iterator[Any]:
        # Leaving the pool (also when the consumer stops early) waits only for the reads already submitted.
        with ThreadPoolExecutor(self.reader_threads, thread_name_prefix="batch-reader") as pool:
            pending: deque = deque()
            for request in self.sampler:
                pending.append(pool.submit(self.dataset.__getitem__, request))
                if len(pending) > self.reader_threads + self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def every_frame_view(views: dict[str, FrameSampler]) -> str | None:
    """The name of a view that reads every frame whole (a teacher's), if any: the loader reads the batch once through
    it, and takes what the other views need from it, a scoring sampler's features included."""
    return next((name for name, sampler in views.items() if sampler.k is None), None)


def _gather(full: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(B, T, D) all frames, (B, k) frame indices (-1 = padding) -> (B, k, D), zero at padding.

    Slot t of the full view holds frame t, so a frame index is also a slot index.
    """
    gathered = full[np.arange(len(full))[:, None], np.maximum(index, 0)]
    gathered[index < 0] = 0
    return gathered


__all__ = ["BatchRequest", "ThreadedDataLoader", "VideoBatchDataset", "VideoBatchSampler", "every_frame_view"]
