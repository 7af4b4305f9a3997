"""Frame samplers: which frames of each video a model sees.

The teacher sees every frame (``AllFramesSampler``); a student sees k frames chosen by one of the paper's
selection schemes (Uniform-k, Random-k, First-k, Middle-k, Last-k, First-Middle-Last-k); an any-k student trains
with ``AnyKSampler``, a k drawn per batch. Samplers live in the data path, not in the model, so the loader reads
only the chosen frames from disk.

Every k-frame sampler places its k slots over the video's TRUE length. A video shorter than k still fills all
k slots: the sampler chooses k positions on a virtual length ``V = max(length, k)`` and maps position v to
frame ``floor(v * length / V)``. For videos at least k frames long that map is the identity; a shorter video
gets every one of its frames, each repeated once or more, evenly (length 3, k = 4 -> frames 0, 0, 1, 2). The
map is monotone, so indices stay sorted and within [0, length - 1], and a model always sees exactly k real
frames. Only ``UniformSampler(over_padded=True)`` (the paper authors' variant) leaves padding in a k view.

In YAML a sampler is chosen by class path::

    class_path: lightning_distill.data.samplers.UniformSampler
    init_args: {k: 30}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from lightning_distill.class_paths import Keyed
from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.errors import ConfigError


class FrameSampler(Keyed, ABC):
    """Chooses frame indices per video from each video's true length.

    ``indices`` returns a (B, T) long tensor of frame indices into each video, sorted along T; -1 marks a
    padding slot. k-frame samplers return T = k and fill every slot with a real frame (see the module
    docstring); ``AllFramesSampler`` returns T = the batch's longest video and pads shorter ones. Random
    samplers draw from the ``generator`` they are given (torch's global generator when None): the data module
    seeds one per batch from (seed, epoch, batch number), so training draws anew every epoch while
    validation/test/predict draws are the same every time.

    Attributes:
        k: frames per video in this view; None for all frames (the teacher view).
        key: the sampler's name in experiment grids (``baselines: [uniform, last]``), for the paper's k-frame
            selections; a subclass that sets it is registered in ``FrameSampler.registry``.
        label: the paper's row label, e.g. ``Uniform-k``.
    """

    k: int | None = None
    label: ClassVar[str | None] = None
    registry: ClassVar[dict[str, type[FrameSampler]]] = {}

    @abstractmethod
    def indices(self, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) long true lengths (>= 1) -> (B, T) long frame indices, -1 at padding."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class AllFramesSampler(FrameSampler):
    """Every frame: 0 .. length - 1, padded with -1 up to the batch's longest video (the teacher view)."""

    def indices(self, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) -> (B, max(lengths)) long."""
        steps = torch.arange(int(lengths.max()), device=lengths.device)
        return torch.where(steps < lengths[:, None], steps, -1)


class KFrameSampler(FrameSampler):
    """Base of the k-frame (student) samplers: validates k and maps virtual positions onto short videos.

    Subclasses implement ``virtual_indices``: k sorted, distinct positions in [0, V - 1] for V = max(length, k).

    Args:
        k: frames kept per video (>= 1).
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ConfigError(f"{type(self).__name__}(k={k}): k must be >= 1 (frames per video)")
        self.k = k

    @abstractmethod
    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B,) virtual lengths V >= k -> (B, k) sorted distinct positions in [0, V - 1]."""

    def indices(self, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) -> (B, k) long, sorted, every slot a real frame (short videos repeat frames)."""
        virtual = lengths.clamp(min=self.k)
        positions = self.virtual_indices(virtual, generator)
        return positions * lengths[:, None] // virtual[:, None]


class UniformSampler(KFrameSampler):
    """Uniform-k: the centres of k equal segments of the video (the paper's best selection).

    Slot i holds frame ``floor((2i + 1) * length / (2k))``; for length 300 and k = 30 that is 5, 15, ..., 295.
    Videos shorter than k repeat frames evenly (see the module docstring).

    Args:
        k: frames kept per video.
        over_padded: the paper authors' variant: a fixed stride ``max_frames // k`` over the zero-padded
            ``max_frames`` tensor (frames 0, stride, 2 * stride, ...) whatever the video's length, so slots past
            a short video's end are padding (-1) and the model sees fewer than k real frames.
        max_frames: the padded length the authors' stride is computed over (only used with ``over_padded``).
    """

    key = "uniform"
    label = "Uniform-k"

    def __init__(self, k: int, over_padded: bool = False, max_frames: int = MAX_FRAMES) -> None:
        super().__init__(k)
        if over_padded and k > max_frames:
            raise ConfigError(f"UniformSampler(k={k}, over_padded=True) needs k <= max_frames={max_frames}")
        self.over_padded = over_padded
        self.max_frames = max_frames

    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B,) -> (B, k): segment centres, in integer arithmetic so no rounding depends on float error."""
        odd = 2 * torch.arange(self.k, device=virtual_lengths.device) + 1
        return odd * virtual_lengths[:, None] // (2 * self.k)

    def indices(self, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) -> (B, k) long; with ``over_padded``, -1 where the fixed stride passes the video's end."""
        if not self.over_padded:
            return super().indices(lengths, generator)
        strided = torch.arange(self.k, device=lengths.device) * (self.max_frames // self.k)
        return torch.where(strided < lengths[:, None], strided, -1)

    def __repr__(self) -> str:
        return f"UniformSampler(k={self.k}, over_padded={self.over_padded}, max_frames={self.max_frames})"


class RandomSampler(KFrameSampler):
    """Random-k: k distinct frames drawn uniformly, sorted (short videos get every frame, evenly repeated).

    A fresh draw each call from ``generator`` (torch's global generator when None), so training sees different
    frames every epoch while a fixed-seed generator makes evaluation repeatable.

    Args:
        k: frames kept per video.
    """

    key = "random"
    label = "Random-k"

    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B,) -> (B, k): the k smallest of i.i.d. uniform keys is a uniform k-subset, drawn for all B at once."""
        width = int(virtual_lengths.max())
        keys = torch.rand(len(virtual_lengths), width, generator=generator, device=virtual_lengths.device)
        beyond = torch.arange(width, device=virtual_lengths.device) >= virtual_lengths[:, None]
        keys.masked_fill_(beyond, 2.0)  # keys are < 1, so positions past V are never among the k smallest
        return keys.topk(self.k, dim=1, largest=False).indices.sort(dim=1).values


class WindowSampler(KFrameSampler):
    """k consecutive frames starting at ``floor(fraction * (V - k))``: First-k, Middle-k, Last-k.

    Args:
        k: frames kept per video.
    """

    fraction: tuple[int, int]  # (numerator, denominator): 0/1 first, 1/2 middle, 1/1 last

    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B,) -> (B, k): one window of k consecutive positions."""
        numerator, denominator = self.fraction
        start = (virtual_lengths - self.k) * numerator // denominator
        return start[:, None] + torch.arange(self.k, device=virtual_lengths.device)


class FirstSampler(WindowSampler):
    """First-k: frames 0 .. k - 1.

    Args:
        k: frames kept per video.
    """

    key = "first"
    label = "First-k"

    fraction = (0, 1)


class MiddleSampler(WindowSampler):
    """Middle-k: k consecutive frames starting at ``(length - k) // 2``.

    Args:
        k: frames kept per video.
    """

    key = "middle"
    label = "Middle-k"

    fraction = (1, 2)


class LastSampler(WindowSampler):
    """Last-k: frames length - k .. length - 1.

    Args:
        k: frames kept per video.
    """

    key = "last"
    label = "Last-k"

    fraction = (1, 1)


class FirstMiddleLastSampler(KFrameSampler):
    """First-Middle-Last-k: k // 3 frames each from the start, the middle and the end.

    With k = 3q + r the remainder goes symmetrically: r = 1 adds a frame to the middle window, r = 2 one to the
    first and one to the last window (k = 10 -> 3 + 4 + 3, k = 20 -> 7 + 6 + 7). The middle window starts at
    ``(length - middle) // 2``; the three windows never overlap when length >= k.

    Args:
        k: frames kept per video.
    """

    key = "first_middle_last"
    label = "First-Middle-Last-k"

    def __init__(self, k: int) -> None:
        super().__init__(k)
        third, remainder = divmod(k, 3)
        self.outer = third + (remainder == 2)
        self.middle = k - 2 * self.outer

    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B,) -> (B, k): the three windows side by side."""
        device = virtual_lengths.device
        first = torch.arange(self.outer, device=device).expand(len(virtual_lengths), -1)
        middle = ((virtual_lengths - self.middle) // 2)[:, None] + torch.arange(self.middle, device=device)
        last = (virtual_lengths - self.outer)[:, None] + torch.arange(self.outer, device=device)
        return torch.cat([first, middle, last], dim=1)


class ScoredSampler(KFrameSampler, ABC):
    """Frames chosen per video from the video's content: the best-scoring frame of each of k equal segments.

    Segment i of a video of length L holds frames ``floor(i L / k) .. floor((i + 1) L / k) - 1`` (Uniform-k's slot
    i is its centre), so the k frames still spread over the whole video, as Uniform-k's do, but each is the one
    its segment's ``scores`` rank first (ties: the earliest). A video shorter than k gets Uniform-k's frames.

    Scores come from the frames themselves, so the data module reads the ``columns`` of the frames scoring looks at
    (``skimmed_positions``: every frame unless a subclass skims fewer) first (see ``data/loading.py``), calls
    ``indices_from_frames``, then reads the k chosen frames whole; ``indices`` alone cannot choose. A segment holding
    no skimmed frame (a video shorter than k times the skim's stride) gets Uniform-k's frame.

    Args:
        k: frames kept per video.

    Attributes:
        columns: the features of every frame that scoring reads, as slices of its 1152 (all unless a subclass needs
            fewer); ``scores`` gets them side by side, in this order.
    """

    columns: tuple[slice, ...] = (slice(None),)

    @abstractmethod
    def scores(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, F) the ``columns`` of every frame as stored (uint8), (B, T) bool mask of real frames -> (B, T)
        float scores."""

    @abstractmethod
    def selection_cost(self, lengths: Tensor) -> dict[str, Tensor]:
        """(B,) lengths -> per video what choosing cost beyond reading and running the k chosen frames:
        ``selection_gflops`` and ``selection_frames`` (features read to score, in frames of FEATURE_DIM values)."""

    def virtual_indices(self, virtual_lengths: Tensor, generator: torch.Generator | None) -> Tensor:
        raise ConfigError(
            f"{self!r} chooses frames from their content: use it as a data module view (vdistill fit/test), "
            "which reads every frame to score them"
        )

    def side_by_side(self, read: Callable[[slice], np.ndarray]) -> np.ndarray:
        """(B, T, F) the ``columns`` that ``scores`` reads, side by side, each got by ``read(columns)`` (a slice of
        whole frames, or a read from the store). A single slice is returned as read: no copy on the loader's path."""
        parts = [read(columns) for columns in self.columns]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def skimmed_positions(self, lengths: Tensor) -> Tensor:
        """(B,) lengths -> (B, S) long: the frames whose ``columns`` scoring reads, -1 at padding (every frame)."""
        return AllFramesSampler().indices(lengths)

    def indices_from_frames(self, lengths: Tensor, positions: Tensor, frames: Tensor) -> Tensor:
        """(B,) lengths, (B, S) their ``skimmed_positions`` (the caller has them: it read those frames), (B, S', F)
        the ``columns`` of those frames (as stored; S' may exceed S) -> (B, k) sorted indices."""
        skimmed = positions.shape[1]
        scores = self.scores(frames[:, :skimmed], positions >= 0)
        # Onto the video's timeline: frames not skimmed score -inf (padding slots land in a spare last column).
        width = max(int(lengths.max()), 1)
        timeline = scores.new_full((len(lengths), width + 1), float("-inf"))
        slots = torch.where(positions >= 0, positions, width)
        timeline.scatter_(1, slots, scores.masked_fill(positions < 0, float("-inf")))
        return self.choose(lengths, timeline[:, :width])

    def choose(self, lengths: Tensor, scores: Tensor) -> Tensor:
        """(B,) lengths, (B, T) scores -> (B, k): the first-ranked frame of each of k segments (see the class docstring)."""
        slots = torch.arange(self.k + 1, device=lengths.device)
        bounds = slots * lengths[:, None] // self.k  # (B, k + 1): segment i is [bounds[i], bounds[i + 1])
        starts, ends = bounds[:, :-1], bounds[:, 1:]
        width = int((ends - starts).max().clamp(min=1))
        candidates = starts[:, :, None] + torch.arange(width, device=lengths.device)  # (B, k, width)
        inside = candidates < ends[:, :, None]
        ranked = scores.gather(1, candidates.clamp(max=scores.shape[1] - 1).flatten(1)).view(candidates.shape)
        ranked = ranked.masked_fill(~inside, float("-inf"))
        best = ranked.argmax(dim=2, keepdim=True)
        chosen = candidates.gather(2, best).squeeze(2)
        unscored = (lengths < self.k)[:, None] | ~torch.isfinite(ranked.gather(2, best).squeeze(2))
        return torch.where(unscored, UniformSampler(self.k).indices(lengths), chosen)


class AnyKSampler(FrameSampler):
    """A k drawn afresh for every batch from ``ks``, then that k's frames by the ``selection`` scheme: the training
    view of an any-k student (one student for every k, see ``StudentModule``'s ``train_sampler``).

    The draw comes from the batch's generator, so it is repeatable (the data module seeds one per batch from
    seed, epoch and batch number) and every video of a batch has the same k, so a batch stays one (B, k) tensor.
    ``k`` is the largest of ``ks``: the most frames a batch can ask for, which is what the data's ``max_frames``
    is checked against.

    Args:
        ks: the frame counts to train at (each >= 1); a k listed twice is drawn twice as often.
        selection: the k-frame scheme at the drawn k, a ``FrameSampler.registry`` key (``uniform``, ``random``,
            ...).
        every_batch: ks (among ``ks``) that every training batch is also seen at, besides the drawn k, their losses
            added: ``[30]`` trains the largest k in every batch, ``[6, 30]`` is the "sandwich rule" of slimmable
            networks (Yu & Huang, ICCV 2019: the smallest and the largest every step). Drawn in one batch of
            ``len(ks)``, an extreme k trains least for what it must cover; each listed k costs one more forward pass
            per step. ``StudentModule`` reads it (``every_batch_samplers``).
    """

    def __init__(self, ks: list[int], selection: str = "uniform", every_batch: list[int] | None = None) -> None:
        if not ks or any(k < 1 for k in ks):
            raise ConfigError(f"AnyKSampler(ks={ks}): list frame counts >= 1 to train at, e.g. [6, 10, 15, 20, 30]")
        if selection not in FrameSampler.registry:
            known = ", ".join(FrameSampler.registry)
            raise ConfigError(f"AnyKSampler(selection={selection!r}) is unknown: choose from {known}")
        stray = [k for k in every_batch or [] if k not in ks]
        if stray:
            raise ConfigError(f"AnyKSampler(every_batch={every_batch}): {stray} not among ks={list(ks)}; name drawn ks")
        self.ks = list(ks)
        self.selection = selection
        self.samplers = [self.at(k) for k in self.ks]
        self.k = max(self.ks)
        self.every_batch = sorted(set(every_batch or []))

    def at(self, k: int) -> FrameSampler:
        """The ``selection`` scheme at ``k`` (a k drawn, or one an any-k student is validated at)."""
        return FrameSampler.registry[self.selection](k)

    @property
    def every_batch_samplers(self) -> dict[int, FrameSampler]:
        """k -> the ``selection`` scheme at that k, for each k of ``every_batch``."""
        return {k: self.samplers[self.ks.index(k)] for k in self.every_batch}

    def indices(self, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) -> (B, k) long, for one k drawn from ``ks``."""
        choice = int(torch.randint(len(self.samplers), (1,), generator=generator))
        return self.samplers[choice].indices(lengths, generator)

    def __repr__(self) -> str:
        every_batch = f", every_batch={self.every_batch}" if self.every_batch else ""
        return f"AnyKSampler(ks={self.ks}, selection={self.selection!r}{every_batch})"


__all__ = [
    "AllFramesSampler",
    "AnyKSampler",
    "FirstMiddleLastSampler",
    "FirstSampler",
    "FrameSampler",
    "KFrameSampler",
    "LastSampler",
    "MiddleSampler",
    "RandomSampler",
    "ScoredSampler",
    "UniformSampler",
    "WindowSampler",
]
