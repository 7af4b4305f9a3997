"""Frames chosen per video: nested stages, a gate trained on the teacher's targets, and honest read counting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from cli_support import CONFIGS, data_args, run_ok, teacher_checkpoint
from conftest import SYNTHETIC_CLASSES
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import UniformSampler
from lightning_distill.errors import ConfigError
from lightning_distill.models import MoEHead, NetVLAD
from lightning_distill.training.checkpoints import load_module
from lightning_distill.training.early_exit import EarlyExitModule, ExitGate, check_stages
from lightning_distill.training.teacher import TeacherModule


@pytest.mark.parametrize(("small", "large"), [(6, 18), (6, 30), (2, 6), (10, 30)])
def test_uniform_frames_of_a_stage_hold_the_last_stages_for_odd_factors(small, large):
    lengths = torch.arange(large, 301)
    few, many = UniformSampler(small).indices(lengths), UniformSampler(large).indices(lengths)
    assert (few[:, :, None] == many[:, None, :]).any(dim=2).all()


def test_stages_must_grow_by_odd_factors():
    check_stages([2, 6, 30])
    for stages, message in (([6, 12], "not an odd multiple of 6"), ([6], "at least two"), ([6, 6], "not an odd")):
        with pytest.raises(ConfigError, match=message):
            check_stages(stages)


def test_the_gate_counts_its_own_flops():
    gate = ExitGate(num_stages=2, hidden=8, top=5)
    assert gate.flops() == 2 * (5 + 1 + 2) * 8 + 2 * 8 * 1
    assert gate(torch.rand(3, 4), 1).shape == (3,)  # fewer classes than top: padded


def netvlad(**changes) -> NetVLAD:
    return NetVLAD(**{"num_clusters": 8, "hidden_size": 64, "gating": True, **changes})


def early_exit(checkpoint, **kwargs) -> EarlyExitModule:
    return EarlyExitModule(netvlad(), SYNTHETIC_CLASSES, init_from=str(checkpoint), teacher_checkpoint=str(checkpoint),
                           stages=[2, 6], head=lambda d, c: MoEHead(d, c, num_mixtures=2, probability_gating=True),
                           **kwargs)


def data_module(synthetic, tmp_path) -> YT8MDataModule:
    return YT8MDataModule(train_files=f"{synthetic}/train*.tfrecord", test_files=f"{synthetic}/test*.tfrecord",
                          predict_files=f"{synthetic}/test*.tfrecord", store_dir=str(tmp_path / "stores"),
                          num_classes=SYNTHETIC_CLASSES, batch_size=8, max_frames=40, val_fraction=0.0,
                          reader_threads=0, normalization=None)


@pytest.fixture(scope="module")
def trained(synthetic_tfrecords, tmp_path_factory):
    """A one-step tiny NetVLAD (as the student and as the teacher) and a gate fitted on it for one epoch."""
    folder = tmp_path_factory.mktemp("early-exit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        checkpoint = teacher_checkpoint("student_netvlad.yaml", synthetic_tfrecords, folder)
        module = early_exit(checkpoint)
        torch.manual_seed(0)
        trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, datamodule=data_module(synthetic_tfrecords, folder))
        path = folder / "early-exit.ckpt"
        trainer.save_checkpoint(path)
    return checkpoint, path, folder


def count_reads(monkeypatch) -> list[int]:
    """Frames read from any frame store from now on (padding slots are not read)."""
    counted: list[int] = []
    read = FrameStore.read_frames

    def counting(self, videos, frames):
        counted.append(int((np.asarray(frames) >= 0).sum()))
        return read(self, videos, frames)

    monkeypatch.setattr(FrameStore, "read_frames", counting)
    return counted


def predict(module, checkpoint, synthetic, folder):
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.predict(module, datamodule=data_module(synthetic, folder), ckpt_path=checkpoint)


def student_predictions(checkpoint, synthetic, folder, k: int) -> torch.Tensor:
    """The student alone at Uniform-k: the independent truth for a policy that stops every video at k frames."""
    student = load_module(TeacherModule, checkpoint)
    student.sampler = UniformSampler(k)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    dm = data_module(synthetic, folder)
    return torch.cat([b["probabilities"] for b in trainer.predict(student.eval(), datamodule=dm)])


@pytest.mark.parametrize(("threshold", "frames"), [(1e9, 2), (-1e9, 6)])
def test_a_policy_that_always_stops_or_always_reads_on_is_the_student_at_that_stage(
    trained, synthetic_tfrecords, monkeypatch, threshold, frames
):
    student_checkpoint, checkpoint, folder = trained
    expected = student_predictions(student_checkpoint, synthetic_tfrecords, folder, frames)
    reads = count_reads(monkeypatch)
    batches = predict(early_exit(student_checkpoint, threshold=threshold), checkpoint, synthetic_tfrecords, folder)
    frames_read = torch.cat([b["frames_read"] for b in batches])
    assert torch.equal(frames_read, torch.full_like(frames_read, frames))
    assert sum(reads) == frames * len(frames_read)  # what it reports is what the store gave: nothing more
    assert torch.allclose(torch.cat([b["probabilities"] for b in batches]), expected, atol=1e-6)


def test_each_video_reads_only_as_far_as_its_gate_says(trained, synthetic_tfrecords, monkeypatch):
    student_checkpoint, checkpoint, folder = trained
    module = early_exit(student_checkpoint)
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    module.eval()
    # A threshold between the gate's scores: some videos stop after 2 frames, the others read 4 more.
    dm = data_module(synthetic_tfrecords, folder)
    dm.views = module.frame_views("predict")
    dm.setup("predict")
    batch = dm.on_after_batch_transfer(next(iter(dm.predict_dataloader())), 0)
    with torch.no_grad():
        scores = module.gate(module(batch.views["student"]).probabilities, 0)
    threshold = float(scores.median())
    reads = count_reads(monkeypatch)
    batches = predict(early_exit(student_checkpoint, threshold=threshold), checkpoint, synthetic_tfrecords, folder)
    frames_read = torch.cat([b["frames_read"] for b in batches])
    assert set(frames_read.tolist()) == {2, 6}
    assert sum(reads) == int(frames_read.sum())
    # Test logs the mean frames read and FLOPs (the gate's included) beside the metrics.
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    module = early_exit(student_checkpoint, threshold=threshold)
    (metrics,) = trainer.test(module, datamodule=data_module(synthetic_tfrecords, folder), ckpt_path=checkpoint,
                              verbose=False)
    assert metrics["test/frames_read"] == pytest.approx(float(frames_read.float().mean()))
    stage2, stage6 = module.stage_flops()
    stopped = float((frames_read == 2).float().mean())
    expected = stage2 + module.gate.flops() + (1 - stopped) * stage6
    assert metrics["test/gflops"] == pytest.approx(expected / 1e9, rel=1e-5)
    assert 0 < metrics["test/gap"] <= 1


def test_fitting_needs_the_student_and_its_teacher(synthetic_tfrecords, tmp_path):
    module = EarlyExitModule(netvlad(), SYNTHETIC_CLASSES, stages=[2, 6], head=MoEHead)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match="set init_from"):
        trainer.fit(module, datamodule=data_module(synthetic_tfrecords, tmp_path))
    assert module.inference_network() is None


def test_the_command_line_fits_a_gate_and_tests_it_at_any_threshold(trained, synthetic_tfrecords, tmp_path,
                                                                      monkeypatch):
    student_checkpoint, _, _ = trained
    monkeypatch.chdir(tmp_path)
    models = [f"--model.init_args.init_from={student_checkpoint}",
              f"--model.init_args.teacher_checkpoint={student_checkpoint}", "--model.init_args.stages=[2, 6]"]
    run_ok(["fit", f"--config={CONFIGS / 'tiny' / 'early_exit_netvlad.yaml'}", *models,
            *data_args(synthetic_tfrecords, tmp_path / "stores"), "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"])
    (checkpoint,) = tmp_path.glob("runs/tiny/early_exit_netvlad/latest/checkpoints/last.ckpt")
    for run, (threshold, frames) in enumerate((("1e9", 2.0), ("-1e9", 6.0))):
        run_ok(["test", f"--config={CONFIGS / 'tiny' / 'early_exit_netvlad.yaml'}", *models,
                *data_args(synthetic_tfrecords, tmp_path / "stores"), f"--ckpt_path={checkpoint}",
                f"--model.init_args.threshold={threshold}"])
        metrics = tmp_path / f"runs/tiny/early_exit_netvlad/test_{run}/test_metrics.json"
        assert json.loads(metrics.read_text())["test/frames_read"] == frames
