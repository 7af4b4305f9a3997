"""The utility skim: each frame's utility under the teacher, the module that learns it, the command line."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from cli_support import CONFIGS, fit_and_test_skim_student, run_error, run_ok, skim_test_setup
from lightning_distill.data.batch import FrameView
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.normalization import dequantize_frames
from lightning_distill.data.yt8m import FEATURE_DIM
from lightning_distill.errors import ConfigError
from lightning_distill.models.skim import SkimEncoder
import lightning_distill.training.frame_utility as frame_utility_module
import lightning_distill.training.student as student_module
from lightning_distill.training.frame_utility import FrameUtilityModule, _frame_targets, frame_utility
from lightning_distill.training.losses import ClassificationLoss
from lightning_distill.training.teacher_targets import load_frozen_teacher


class FirstFeaturesReader(nn.Module):
    """A reader that gives class c the probability sigmoid(feature c) of a one-frame video's frame."""

    def forward(self, view: FrameView) -> SimpleNamespace:
        assert view.frames.shape[1] == 1 and view.mask.all()  # frames are shown one at a time
        return SimpleNamespace(probabilities=torch.sigmoid(view.frames[:, 0, :3]))


def test_a_frames_utility_is_the_log_probability_of_its_videos_labels_standardised_within_the_video():
    torch.manual_seed(0)
    frames = torch.randn(3, 5, 8)
    mask = torch.arange(5) < torch.tensor([[5], [3], [4]])
    positions = torch.where(mask, torch.arange(5), -1)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    utility, defined = frame_utility(FirstFeaturesReader(), FrameView(frames, mask, positions), labels)
    for video, length in ((0, 5), (1, 3)):
        x = frames[video, :length, :3].double().numpy()
        raw = (labels[video].double().numpy() * -np.log1p(np.exp(-x))).sum(axis=1)
        expected = (raw - raw.mean()) / raw.std()
        assert np.allclose(utility[video, :length].double().numpy(), expected, atol=1e-5)
        assert defined[video, :length].all() and not defined[video, length:].any()
        assert (utility[video, length:] == 0).all()
    # An unlabelled video has no utility to learn.
    assert not defined[2].any() and (utility[2] == 0).all()


def check_utility_cache(path, store_path, reader) -> None:
    """The cache at ``path`` holds, for every video of the store, ``frame_utility`` of the video shown alone (frames
    dequantised and L2-normalised, the data's default) in its first slots and NaN after (float16)."""
    store = FrameStore(store_path)
    with h5py.File(path, "r") as f:
        rows = f["utility"][:]
    assert rows.dtype == np.float16 and rows.shape == (len(store), 40) and np.isfinite(rows).sum() > len(store)
    for index in range(len(store)):
        record = store[index]
        frames = torch.from_numpy(np.concatenate([record.rgb, record.audio], axis=1)[:40])
        frames = torch.nn.functional.normalize(dequantize_frames(frames), dim=-1)[None]
        length = frames.shape[1]
        labels = torch.zeros(1, reader.head.num_classes)
        labels[0, torch.from_numpy(record.labels)] = 1.0
        view = FrameView(frames, torch.ones(1, length, dtype=torch.bool), torch.arange(length)[None])
        utility, defined = frame_utility(reader, view, labels)
        expected = torch.where(defined, utility, torch.nan)[0].numpy()
        assert np.allclose(rows[index, :length].astype(np.float32), expected, atol=5e-3, equal_nan=True)
        assert np.isnan(rows[index, length:].astype(np.float32)).all()


def test_cached_targets_are_gathered_by_frame_position_and_undefined_where_nan_or_padding():
    class Rows:
        def read(self, videos):
            table = np.array([[0.5, np.nan, 2.0, -1.0], [1.0, 3.0, np.nan, np.nan]], np.float16)
            return {"utility": table[videos]}

    positions = torch.tensor([[2, 0, 1, -1], [1, 0, -1, -1]])
    target, defined = _frame_targets(Rows(), torch.tensor([0, 1]), positions)
    assert defined.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert target.tolist() == [[2.0, 0.5, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]]


def test_the_module_learns_the_read_out_of_a_utility_skim_only(tmp_path):
    with pytest.raises(ConfigError, match="SkimEncoder with scoring: utility"):
        FrameUtilityModule(SkimEncoder(), 4, ensemble_teachers=[str(tmp_path / "t.ckpt")])
    with pytest.raises(ConfigError, match="utility_weight=0"):
        FrameUtilityModule(SkimEncoder(scoring="utility"), 4, utility_weight=0,
                           ensemble_teachers=[str(tmp_path / "t.ckpt")])
    with pytest.raises(ConfigError, match="needs a reader"):
        FrameUtilityModule(SkimEncoder(scoring="utility"), 4, loss={"ce": ClassificationLoss()})


def test_the_command_line_trains_a_utility_skim_and_a_student_reads_its_choice(synthetic_tfrecords, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    teacher, data, short = skim_test_setup(synthetic_tfrecords, tmp_path)
    scorer_config = CONFIGS / "tiny" / "utility_skim_scorer.yaml"
    loads = []
    for module in (student_module, frame_utility_module):
        monkeypatch.setattr(module, "load_frozen_teacher", lambda path: loads.append(path) or load_frozen_teacher(path))
    run_ok(["fit", f"--config={scorer_config}", *data, *short, f"--model.init_args.ensemble_teachers=[{teacher}]"])
    # The reader is the teacher whose targets the fit caches: its checkpoint is read once, not once per use.
    assert loads == [str(teacher)]
    # Every frame's utility is kept beside each store, one file per split, as computed for each video alone.
    caches = sorted((tmp_path / "stores").glob("*.utility-*.h5"))
    assert [path.name.split(".")[0] for path in caches] == ["train", "val"]
    check_utility_cache(caches[0], tmp_path / "stores" / "train.h5", load_frozen_teacher(str(teacher)))
    # A later fit with the same reader and data reuses them.
    written = [path.stat().st_mtime_ns for path in caches]
    run_ok(["fit", f"--config={scorer_config}", *data, *short, f"--model.init_args.ensemble_teachers=[{teacher}]",
            "--run_name=again"])
    assert sorted((tmp_path / "stores").glob("*.utility-*.h5")) == caches
    assert [path.stat().st_mtime_ns for path in caches] == written
    (run,) = tmp_path.glob("runs/tiny/utility_skim_scorer/latest")
    # The best checkpoint is kept by val/utility, which the fit logs (Lightning fails a monitor never logged).
    (best,) = run.glob("checkpoints/best.ckpt")
    logged, _ = fit_and_test_skim_student(best, teacher, data, short, tmp_path)
    # Charged for what it skims: 32 + 32 features of every 4th frame, those of the 4 chosen frames not twice.
    lengths = np.minimum(FrameStore(tmp_path / "stores" / "test.h5").lengths, 40)
    skimmed = np.ceil(lengths / 4)
    skim = SkimEncoder(hidden=32, rgb_dims=32, audio_dims=32, scoring="utility", stride=4)
    assert logged["test/selection_gflops"] == pytest.approx(skimmed.mean() * skim.flops_per_frame() / 1e9, rel=1e-5)
    assert logged["test/selection_frames"] == pytest.approx((skimmed - 4).mean() * 64 / FEATURE_DIM, rel=1e-5)
    # A reader trained on other inputs than the data gives would score frames it never saw: refused in one line.
    message = run_error(["fit", f"--config={scorer_config}", *data, *short,
                         f"--model.init_args.ensemble_teachers=[{teacher}]", "--run_name=other_inputs",
                         "--data.normalization=lightning_distill.data.normalization.NoNormalization"], capsys)
    assert str(teacher) in message and "NoNormalization" in message and "reader_checkpoint" in message
