"""Frames chosen per video by a skim: the segment rule, what the skim reads, the loader, the command line."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from cli_support import (
    CONFIGS,
    fit_and_test_skim_student,
    run_error,
    run_ok,
    skim_sampler_arg,
    skim_test_setup,
    teacher_checkpoint,
)
from lightning_distill.data.column_store import open_column_store
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.loading import BatchRequest, VideoBatchDataset
from lightning_distill.data.samplers import AllFramesSampler, ScoredSampler, UniformSampler
from lightning_distill.data.yt8m import AUDIO_DIM, FEATURE_DIM, RGB_DIM
from lightning_distill.errors import ConfigError
from lightning_distill.models.skim import SkimEncoder
from lightning_distill.training.skim_sampler import SkimSampler


class GivenScores(ScoredSampler):
    """Scores fixed by the test: a (B, T) table, whatever the frames."""

    def __init__(self, k: int, table: torch.Tensor) -> None:
        super().__init__(k)
        self.table = table

    def scores(self, frames, mask):
        return self.table

    def selection_cost(self, lengths):
        return {}


class FirstAudioFeature(ScoredSampler):
    """Scores each frame by its first audio feature as stored: what a test can recompute from the store."""

    columns = (slice(RGB_DIM, None),)

    def scores(self, frames, mask):
        assert frames.shape[2] == AUDIO_DIM  # only the columns it asked for were read
        return frames[..., 0].float().masked_fill(~mask, float("-inf"))

    def selection_cost(self, lengths):
        return {}


class SecondRgbPlusFirstAudio(ScoredSampler):
    """Scores each frame by its rgb feature 1 plus its audio feature 0 as stored, read as two slices."""

    columns = (slice(0, 2), slice(RGB_DIM, RGB_DIM + 1))

    def scores(self, frames, mask):
        assert frames.shape[2] == 3  # the two slices side by side, nothing else
        return (frames[..., 1].float() + frames[..., 2].float()).masked_fill(~mask, float("-inf"))

    def selection_cost(self, lengths):
        return {}


def converted_test_store(synthetic_tfrecords, tmp_path) -> FrameStore:
    """The session's synthetic test shards converted into a frame store."""
    from lightning_distill.data.convert import convert

    convert(sorted(synthetic_tfrecords.glob("test*.tfrecord")), tmp_path / "test.h5")
    return FrameStore(tmp_path / "test.h5")


def recorded_reads(monkeypatch) -> list[tuple[list[int], int]]:
    """Record every ``FrameStore.read_frames`` from now on: the frame indices it read (padding left out) and the
    features per frame."""
    reads = []
    read = FrameStore.read_frames

    def recording(self, videos, frames, columns=slice(None)):
        out = read(self, videos, frames, columns)
        frames = np.asarray(frames)
        reads.append((frames[frames >= 0].tolist(), out.shape[2]))
        return out

    monkeypatch.setattr(FrameStore, "read_frames", recording)
    return reads


def test_each_of_k_segments_gives_its_best_scoring_frame():
    table = torch.tensor(
        [
            # length 10, k = 3: segments [0, 3), [3, 6), [6, 10) -> 1, 5, 6
            [0.0, 9.0, 1.0, 2.0, 2.5, 7.0, 8.0, 3.0, 3.0, 1.0],
            # length 7: [0, 2), [2, 4), [4, 7); ties go to the earliest frame -> 0, 2, 6
            [4.0, 4.0, 1.0, 1.0, 0.0, 0.0, 5.0, -9.0, -9.0, -9.0],
            # length 2 < k: Uniform-3's frames of a 2-frame video, 0, 0, 1, whatever the scores
            [0.0, 9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0],
        ]
    )
    lengths = torch.tensor([10, 7, 2])
    chosen = GivenScores(3, table).choose(lengths, table)
    assert chosen.tolist() == [[1, 5, 6], [0, 2, 6], [0, 0, 1]]
    assert torch.equal(chosen[2], UniformSampler(3).indices(lengths[2:])[0])


def test_a_content_sampler_cannot_choose_without_the_frames():
    with pytest.raises(ConfigError, match="chooses frames from their content"):
        FirstAudioFeature(3).indices(torch.tensor([10]))


def test_the_skim_reads_only_audio_and_ignores_padding():
    torch.manual_seed(0)
    skim = SkimEncoder(hidden=8).eval()
    frames = torch.randn(2, 12, FEATURE_DIM)
    mask = torch.arange(12) < torch.tensor([[12], [7]])
    other_rgb = frames.clone()
    other_rgb[..., :RGB_DIM] = torch.randn(2, 12, RGB_DIM)
    assert torch.equal(skim.skimmed(frames), frames[..., RGB_DIM:])
    scores = skim.frame_scores(skim.skimmed(frames), mask)
    assert torch.equal(scores, skim.frame_scores(skim.skimmed(other_rgb), mask))
    assert torch.isinf(scores[1, 7:]).all() and torch.isfinite(scores[1, :7]).all()
    # Padding changes neither the pooled representation nor the real frames' scores.
    alone = skim(frames[1:, :7], mask[1:, :7]).representation
    assert torch.allclose(skim(frames, mask).representation[1:], alone)
    assert torch.allclose(scores[1, :7], skim.frame_scores(frames[1:, :7, RGB_DIM:], mask[1:, :7])[0])
    assert skim.flops_per_frame() == 2 * (AUDIO_DIM * 8 + 8 * 8)
    # A frame scaled as a whole (the default joint L2 normalisation divides audio by the rgb's size too) scores the
    # same, so the skim can score raw audio alone.
    scaled = frames * torch.rand(2, 12, 1).add(0.1)
    assert torch.allclose(skim.frame_scores(skim.skimmed(scaled), mask), scores, atol=1e-5)


def test_a_low_rank_skim_reads_the_leading_features_of_each_modality():
    torch.manual_seed(0)
    skim = SkimEncoder(hidden=8, rgb_dims=3, audio_dims=2).eval()
    assert skim.columns == (slice(0, 3), slice(RGB_DIM, RGB_DIM + 2))
    frames = torch.randn(2, 12, FEATURE_DIM)
    mask = torch.ones(2, 12, dtype=torch.bool)
    skimmed = skim.skimmed(frames)
    assert torch.equal(skimmed, torch.cat([frames[..., :3], frames[..., RGB_DIM : RGB_DIM + 2]], dim=-1))
    scores = skim.frame_scores(skimmed, mask)
    unread = frames.clone()
    unread[..., 3:RGB_DIM] = torch.randn(2, 12, RGB_DIM - 3)
    unread[..., RGB_DIM + 2 :] = torch.randn(2, 12, AUDIO_DIM - 2)
    assert torch.equal(skim.frame_scores(skim.skimmed(unread), mask), scores)
    read = frames.clone()
    read[..., 0] += 5
    assert not torch.allclose(skim.frame_scores(skim.skimmed(read), mask), scores)
    # Each modality's slice is scaled to unit length on its own, so scaling a whole frame changes nothing.
    scaled = frames * torch.rand(2, 12, 1).add(0.1)
    assert torch.allclose(skim.frame_scores(skim.skimmed(scaled), mask), scores, atol=1e-5)
    assert torch.allclose(skim(frames, mask).representation, skim(scaled, mask).representation, atol=1e-5)
    assert skim.flops_per_frame() == 2 * (5 * 8 + 8 * 8)
    assert SkimEncoder(rgb_dims=4, audio_dims=0).columns == (slice(0, 4),)


@pytest.mark.parametrize("dims", [{"rgb_dims": 0, "audio_dims": 0}, {"rgb_dims": 1025}, {"audio_dims": -1}])
def test_a_skim_must_read_some_features_of_a_frame(dims):
    with pytest.raises(ConfigError, match=r"SkimEncoder\(rgb_dims=.*read 0\.\.1024 rgb and 0\.\.128 audio features"):
        SkimEncoder(**dims)


@pytest.mark.parametrize(
    ("sampler", "widths", "score"),
    [
        (FirstAudioFeature, [AUDIO_DIM], lambda frames: frames[:, RGB_DIM]),
        (SecondRgbPlusFirstAudio, [2, 1], lambda frames: frames[:, 1].astype(int) + frames[:, RGB_DIM]),
    ],
)
def test_a_scored_view_reads_what_it_scores_of_every_frame_then_its_best_frames_whole(sampler, widths, score,
                                                                                    synthetic_tfrecords, tmp_path,
                                                                                    monkeypatch):
    store = converted_test_store(synthetic_tfrecords, tmp_path)
    videos = np.arange(len(store))
    dataset = VideoBatchDataset(store, videos, {"student": sampler(4)}, max_frames=300)
    reads = recorded_reads(monkeypatch)
    batch = dataset[BatchRequest(positions=list(range(len(store))), seed=0)]
    # What it scores of every frame, then the 4 chosen frames of each video whole: what selection_cost charges for.
    every = int(store.lengths.sum())
    counted = [(len(frames), width) for frames, width in reads]
    assert counted == [*[(every, width) for width in widths], (4 * len(store), FEATURE_DIM)]
    # Beside a view of every frame (a live teacher's), that one read serves both.
    both = VideoBatchDataset(store, videos, {"teacher": AllFramesSampler(), "student": sampler(4)}, 300)
    reads.clear()
    with_teacher = both[BatchRequest(positions=list(range(len(store))), seed=0)]
    assert [(len(frames), width) for frames, width in reads] == [(every, FEATURE_DIM)]
    assert torch.equal(with_teacher.views["student"].positions, batch.views["student"].positions)
    assert torch.equal(with_teacher.views["student"].frames, batch.views["student"].frames)
    monkeypatch.undo()
    for row, video in enumerate(videos):
        length = int(store.lengths[video])
        scores = score(store.read_frames(np.array([video]), np.arange(length)[None])[0])
        bounds = [i * length // 4 for i in range(5)]
        expected = [start + int(np.argmax(scores[start:end])) for start, end in zip(bounds, bounds[1:])]
        assert batch.views["student"].positions[row].tolist() == expected
        chosen = store.read_frames(np.array([video]), np.array([expected]))[0]
        assert np.array_equal(batch.views["student"].frames[row].numpy(), chosen)


def test_the_skim_sampler_refuses_a_missing_or_foreign_checkpoint(tmp_path, synthetic_tfrecords):
    with pytest.raises(ConfigError, match="does not exist"):
        SkimSampler(6, str(tmp_path / "nowhere.ckpt")).scorer()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        netvlad = teacher_checkpoint("student_netvlad.yaml", synthetic_tfrecords, tmp_path)
    sampler = SkimSampler(6, str(netvlad))
    with pytest.raises(ConfigError, match="not a SkimEncoder"):
        sampler.scorer()
    copy = pickle.loads(pickle.dumps(sampler))  # for loader workers: the setting, not a loaded scorer
    assert repr(copy) == repr(sampler) and copy._scorer is None


def test_the_command_line_trains_a_skim_and_a_student_that_reads_its_frames(synthetic_tfrecords, tmp_path,
                                                                            monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    teacher, data, short = skim_test_setup(synthetic_tfrecords, tmp_path)
    run_ok(["fit", f"--config={CONFIGS / 'tiny' / 'skim_scorer.yaml'}", *data, *short,
            f"--model.init_args.ensemble_teachers=[{teacher}]"])
    (scorer,) = tmp_path.glob("runs/tiny/skim_scorer/latest/checkpoints/last.ckpt")
    logged, checkpoint = fit_and_test_skim_student(scorer, teacher, data, short, tmp_path)
    student, sampler = CONFIGS / "tiny" / "student_netvlad.yaml", skim_sampler_arg(scorer)
    assert 0 < logged["test/gap"] <= 1
    # Choosing is paid for: the skim on every frame and the audio of the frames not chosen, per test video.
    lengths = np.minimum(FrameStore(tmp_path / "stores" / "test.h5").lengths, 40)
    skim = SkimEncoder(hidden=16)
    assert logged["test/selection_gflops"] == pytest.approx(lengths.mean() * skim.flops_per_frame() / 1e9, rel=1e-5)
    assert logged["test/selection_frames"] == pytest.approx((lengths - 4).mean() * AUDIO_DIM / FEATURE_DIM, rel=1e-5)
    # A scorer that is not a skim is refused in one line, naming the file.
    foreign = sampler.replace(str(scorer), str(teacher))
    message = run_error(["test", f"--config={student}", *data, f"--ckpt_path={checkpoint}", foreign], capsys)
    assert str(teacher) in message and "not a SkimEncoder" in message

    # A low-rank skim (leading rgb and audio features) is charged for the features it reads of the frames not chosen.
    low_rank = "--model.init_args.encoder.init_args={rgb_dims: 8, audio_dims: 8}"
    run_ok(["fit", f"--config={CONFIGS / 'tiny' / 'skim_scorer.yaml'}", *data, *short,
            f"--model.init_args.ensemble_teachers=[{teacher}]", low_rank, "--run_name=low_rank"])
    (low_rank_scorer,) = tmp_path.glob("runs/tiny/low_rank/latest/checkpoints/last.ckpt")
    run_ok(["test", f"--config={student}", *data, f"--ckpt_path={checkpoint}",
            sampler.replace(str(scorer), str(low_rank_scorer))])
    logged = json.loads(max(tmp_path.glob("runs/tiny/student_netvlad_k4/test_*/test_metrics.json")).read_text())
    assert logged["test/selection_frames"] == pytest.approx((lengths - 4).mean() * 16 / FEATURE_DIM, rel=1e-5)
    # Trained on rgb rescaled feature by feature, it would score raw rgb otherwise than it learned: refused.
    run_ok(["fit", f"--config={CONFIGS / 'tiny' / 'skim_scorer.yaml'}", *data, *short,
            f"--model.init_args.ensemble_teachers=[{teacher}]", low_rank, "--run_name=whitened",
            "--data.normalization=lightning_distill.data.normalization.ReverseWhitening"])
    (whitened,) = tmp_path.glob("runs/tiny/whitened/latest/checkpoints/last.ckpt")
    message = run_error(["test", f"--config={student}", *data, f"--ckpt_path={checkpoint}",
                         sampler.replace(str(scorer), str(whitened))], capsys)
    assert str(whitened) in message and "ReverseWhitening" in message and "FrameL2Normalization" in message


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_data_module_scores_from_the_skimmed_features_kept_apart(synthetic_tfrecords, tmp_path, monkeypatch,
                                                                      num_workers):
    from lightning_distill.data.datamodule import YT8MDataModule
    from lightning_distill.data.normalization import NoNormalization

    def first_batch(skims_apart: bool):
        data = YT8MDataModule(test_files=str(synthetic_tfrecords / "test*.tfrecord"), store_dir=str(tmp_path),
                              num_workers=num_workers, reader_threads=0, normalization=NoNormalization(),
                              views={"student": FirstAudioFeature(4)}, skims_apart=skims_apart)
        data.prepare_data()
        data.setup("test")
        return next(iter(data.test_dataloader()))

    from_the_store = first_batch(False)
    assert not list(tmp_path.glob("test.columns-*.h5"))
    # Kept apart, the skim reads the audio from its own file (the store's rows only for the chosen frames) and
    # chooses, and reads, the same frames.
    sources = []
    source = FrameStore._source

    def recording(self, columns):
        found = source(self, columns)
        sources.append(type(found[0]).__name__)
        return found

    monkeypatch.setattr(FrameStore, "_source", recording)
    kept_apart = first_batch(True)
    (columns,) = tmp_path.glob("test.columns-*.h5")
    assert h5py.File(columns, "r")["frames"].shape[1] == AUDIO_DIM
    assert torch.equal(kept_apart.views["student"].positions, from_the_store.views["student"].positions)
    assert torch.equal(kept_apart.views["student"].frames, from_the_store.views["student"].frames)
    if num_workers == 0:
        assert sources == ["ColumnStore", "_FrameReader"]  # every frame's audio, then the 4 chosen frames whole


def test_a_store_opens_its_column_store_once_for_all_its_loaders(synthetic_tfrecords, tmp_path, monkeypatch):
    from lightning_distill.data import datamodule
    from lightning_distill.data.normalization import NoNormalization

    opened = []
    monkeypatch.setattr(datamodule, "open_column_store",
                        lambda store, columns: opened.append(columns) or open_column_store(store, columns))
    data = datamodule.YT8MDataModule(test_files=str(synthetic_tfrecords / "test*.tfrecord"), store_dir=str(tmp_path),
                                     num_workers=0, reader_threads=0, normalization=NoNormalization(),
                                     views={"a": FirstAudioFeature(4), "b": FirstAudioFeature(2)})
    data.prepare_data()
    data.setup("test")
    first, second = next(iter(data.test_dataloader())), next(iter(data.test_dataloader()))
    # Two views skimming the same columns, two loaders: one lock, hash and open of the one column store.
    assert opened == [(slice(RGB_DIM, None),)]
    assert torch.equal(first.views["a"].frames, second.views["a"].frames)


class StridedFirstAudioFeature(FirstAudioFeature):
    """``FirstAudioFeature`` of every 3rd frame only, as a ``SkimEncoder(stride=3)`` skims."""

    def skimmed_positions(self, lengths):
        return SkimEncoder(stride=3).skimmed_positions(lengths)


def test_a_strided_skim_chooses_among_the_frames_it_skims_and_falls_back_to_uniform_where_it_skims_none():
    lengths = torch.tensor([10, 4])
    # Scores of the skimmed frames 0, 3, 6, 9 (video 0) and 0, 3 (video 1); -1 pads the second row.
    positions = SkimEncoder(stride=3).skimmed_positions(lengths)
    assert positions.tolist() == [[0, 3, 6, 9], [0, 3, -1, -1]]
    table = torch.tensor([[1.0, 5.0, 2.0, 3.0], [1.0, 2.0, 0.0, 0.0]])

    chosen = GivenScores(3, table).indices_from_frames(lengths, positions, torch.zeros(2, 4, 1))
    # Video 0, segments [0, 3), [3, 6), [6, 10): the skimmed frames 0, then 3, then 9 (score 3 > 2).
    # Video 1, segments [0, 1), [1, 2), [2, 4): frame 0, none skimmed (Uniform-3's slot 1: frame 2), then 3.
    assert chosen.tolist() == [[0, 3, 9], [0, 2, 3]]
    assert UniformSampler(3).indices(lengths[1:]).tolist() == [[0, 2, 3]]


def test_a_strided_skim_reads_only_the_frames_it_skims(synthetic_tfrecords, tmp_path, monkeypatch):
    store = converted_test_store(synthetic_tfrecords, tmp_path)
    videos = np.arange(len(store))
    dataset = VideoBatchDataset(store, videos, {"student": StridedFirstAudioFeature(4)}, max_frames=300)
    reads = recorded_reads(monkeypatch)
    batch = dataset[BatchRequest(positions=list(range(len(store))), seed=0)]
    (skimmed, skim_width), (chosen, chosen_width) = reads
    assert skim_width == AUDIO_DIM and chosen_width == FEATURE_DIM
    # The audio of frames 0, 3, 6, ... of each video and nothing else, then the 4 chosen frames whole.
    assert skimmed == [t for length in store.lengths for t in range(0, int(length), 3)]
    assert len(chosen) == 4 * len(store)
    # Beside a live teacher's view of every frame, the skim takes its frames from that one read, and chooses the same.
    both = VideoBatchDataset(store, videos, {"teacher": AllFramesSampler(), "student": StridedFirstAudioFeature(4)}, 300)
    with_teacher = both[BatchRequest(positions=list(range(len(store))), seed=0)]
    assert torch.equal(with_teacher.views["student"].positions, batch.views["student"].positions)
    monkeypatch.undo()
    for row, video in enumerate(videos):
        length = int(store.lengths[video])
        audio = store.read_frames(np.array([video]), np.arange(length)[None])[0][:, RGB_DIM]
        bounds = [i * length // 4 for i in range(5)]
        expected = [max(range(start + (-start) % 3, end, 3), key=lambda t: (audio[t], -t)) for start, end in
                    zip(bounds, bounds[1:])]
        assert batch.views["student"].positions[row].tolist() == expected


def test_a_utility_skim_scores_frames_by_its_read_out_and_skims_every_stride_th_frame():
    torch.manual_seed(0)
    skim = SkimEncoder(hidden=8, rgb_dims=3, audio_dims=2, scoring="utility", stride=2).eval()
    frames = torch.randn(2, 7, FEATURE_DIM)
    mask = torch.arange(7) < torch.tensor([[7], [5]])
    skimmed = skim.skimmed(frames)
    scores = skim.frame_scores(skimmed, mask)
    read_out = skim.utility(skim.frame_features(skimmed)).squeeze(-1)
    assert torch.equal(scores[mask], read_out[mask]) and torch.isinf(scores[~mask]).all()
    # The read-out per slot is the encoder's intermediate state, zero at padding (what the utility term regresses).
    intermediate = skim(frames, mask).intermediate.squeeze(-1)
    assert torch.allclose(intermediate[mask], read_out[mask]) and (intermediate[~mask] == 0).all()
    assert skim.skimmed_positions(torch.tensor([7, 4])).tolist() == [[0, 2, 4, 6], [0, 2, -1, -1]]
    assert skim.flops_per_frame() == 2 * (5 * 8 + 8 * 8 + 8 * 1)
    assert SkimEncoder(hidden=8)(frames, mask).intermediate is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"scoring": "loudest"}, "choose rise or utility"), ({"stride": 0}, r"stride=0\): skim every frame")],
)
def test_a_skim_refuses_an_unknown_scoring_or_a_stride_below_one(settings, message):
    with pytest.raises(ConfigError, match=message):
        SkimEncoder(**settings)
