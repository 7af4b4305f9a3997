"""Frame samplers against hand-computed indices and the invariants every view must keep."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.data.samplers import (
    AllFramesSampler,
    AnyKSampler,
    FirstMiddleLastSampler,
    FirstSampler,
    LastSampler,
    MiddleSampler,
    RandomSampler,
    UniformSampler,
)
from lightning_distill.errors import ConfigError

LENGTHS = torch.tensor([10, 300, 3])

# Worked by hand for lengths [10, 300, 3] and k = 4. A video shorter than k (length 3) maps the 4 positions
# 0..3 of a virtual length-4 video onto frames floor(v * 3 / 4) = 0, 0, 1, 2 for every sampler.
EXPECTED_K4 = {
    # centres (2i+1) * L // 8: 10 -> 1, 3, 6, 8; 300 -> 37, 112, 187, 262
    UniformSampler(4): [[1, 3, 6, 8], [37, 112, 187, 262], [0, 0, 1, 2]],
    FirstSampler(4): [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 1, 2]],
    # start (L - 4) // 2: 10 -> 3, 300 -> 148
    MiddleSampler(4): [[3, 4, 5, 6], [148, 149, 150, 151], [0, 0, 1, 2]],
    LastSampler(4): [[6, 7, 8, 9], [296, 297, 298, 299], [0, 0, 1, 2]],
    # k = 4 = 3 + 1: one first, two middle (start (L - 2) // 2), one last
    FirstMiddleLastSampler(4): [[0, 4, 5, 9], [0, 149, 150, 299], [0, 0, 1, 2]],
    # the authors' stride 300 // 4 = 75 over the padded tensor; slots past the end are padding
    UniformSampler(4, over_padded=True): [[0, -1, -1, -1], [0, 75, 150, 225], [0, -1, -1, -1]],
}

K_SAMPLERS = [UniformSampler, RandomSampler, FirstSampler, MiddleSampler, LastSampler, FirstMiddleLastSampler]


@pytest.mark.parametrize("sampler", list(EXPECTED_K4), ids=repr)
def test_hand_computed_indices(sampler):
    assert sampler.indices(LENGTHS).tolist() == EXPECTED_K4[sampler]


def test_all_frames_pads_to_the_longest_video():
    expected = [list(range(10)) + [-1] * 290, list(range(300)), [0, 1, 2] + [-1] * 297]
    assert AllFramesSampler().indices(LENGTHS).tolist() == expected
    assert AllFramesSampler().k is None


def test_uniform_on_a_full_video_is_evenly_spaced():
    assert UniformSampler(30).indices(torch.tensor([300])).tolist() == [list(range(5, 300, 10))]


@pytest.mark.parametrize(("k", "sizes"), [(1, (0, 1, 0)), (2, (1, 0, 1)), (10, (3, 4, 3)), (20, (7, 6, 7))])
def test_first_middle_last_splits_the_remainder_symmetrically(k, sizes):
    length = 100
    first, middle, last = sizes
    middle_start = (length - middle) // 2
    expected = list(range(first)) + list(range(middle_start, middle_start + middle))
    expected += list(range(length - last, length))
    assert FirstMiddleLastSampler(k).indices(torch.tensor([length])).tolist() == [expected]


@pytest.mark.parametrize("sampler_cls", K_SAMPLERS)
@pytest.mark.parametrize("k", [1, 4, 30])
def test_k_views_are_sorted_in_bounds_and_full(sampler_cls, k):
    lengths = torch.arange(1, 302, 7)  # 1 .. 295: shorter and longer than every k
    index = sampler_cls(k).indices(lengths, torch.Generator().manual_seed(0))
    assert index.shape == (len(lengths), k) and index.dtype == torch.long
    assert (index >= 0).all() and (index < lengths[:, None]).all()
    assert (index.diff(dim=1) >= 0).all()
    # Long enough videos get k distinct frames; shorter ones get each of their frames at least once.
    for row, length in zip(index.tolist(), lengths.tolist()):
        assert len(set(row)) == min(length, k)


def test_random_is_deterministic_given_a_seeded_generator():
    draw = lambda seed: RandomSampler(10).indices(LENGTHS, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_random_covers_different_frames_across_epochs():
    sampler, generator = RandomSampler(5), torch.Generator().manual_seed(0)
    lengths = torch.tensor([300])
    seen = torch.cat([sampler.indices(lengths, generator) for _ in range(50)]).unique()
    # 50 draws of 5 of 300 frames cover ~172 distinct frames on average; a frozen draw would cover 5.
    assert len(seen) > 120


def test_random_is_uniform_over_frames():
    lengths = torch.full((20000,), 10)
    index = RandomSampler(3).indices(lengths, torch.Generator().manual_seed(1))
    counts = torch.bincount(index.flatten(), minlength=10)
    # each frame is chosen with probability 3/10: 6000 expected, std ~65
    assert ((counts - 6000).abs() < 400).all()


@pytest.mark.parametrize("sampler_cls", K_SAMPLERS)
def test_k_below_one_is_a_config_error(sampler_cls):
    with pytest.raises(ConfigError, match="k must be >= 1"):
        sampler_cls(0)


def test_over_padded_k_beyond_max_frames_is_a_config_error():
    with pytest.raises(ConfigError, match="max_frames"):
        UniformSampler(301, over_padded=True)


def test_any_k_draws_one_k_per_batch_from_its_generator_and_selects_like_that_k():
    sampler = AnyKSampler([2, 4, 7], selection="uniform")
    assert sampler.k == 7
    views = {seed: sampler.indices(LENGTHS, torch.Generator().manual_seed(seed)) for seed in range(40)}
    for seed, view in views.items():
        k = view.shape[1]
        assert torch.equal(view, UniformSampler(k).indices(LENGTHS))
        assert torch.equal(view, sampler.indices(LENGTHS, torch.Generator().manual_seed(seed)))  # repeatable
    counts = {k: sum(view.shape[1] == k for view in views.values()) for k in (2, 4, 7)}
    # 40 draws of 3 equally likely ks: each expected 13.3 times; fewer than 5 has probability < 1e-3.
    assert all(count >= 5 for count in counts.values()), counts


def test_any_k_every_batch_ks_are_the_selection_at_those_ks():
    sampler = AnyKSampler([6, 30, 10], selection="random", every_batch=[30, 6])
    assert sampler.every_batch == [6, 30]
    assert {k: (type(s), s.k) for k, s in sampler.every_batch_samplers.items()} == {6: (RandomSampler, 6),
                                                                                   30: (RandomSampler, 30)}
    assert repr(sampler) == "AnyKSampler(ks=[6, 30, 10], selection='random', every_batch=[6, 30])"
    assert AnyKSampler([6, 30]).every_batch_samplers == {}
    with pytest.raises(ConfigError, match=r"\[12\] not among ks=\[6, 30\]"):
        AnyKSampler([6, 30], every_batch=[12])


@pytest.mark.parametrize(("ks", "selection", "message"), [([], "uniform", "ks=\\[\\]"), ([0, 4], "uniform", ">= 1"),
                                                          ([4], "evenly", "choose from uniform")])
def test_any_k_bad_settings_are_config_errors(ks, selection, message):
    with pytest.raises(ConfigError, match=message):
        AnyKSampler(ks, selection)
