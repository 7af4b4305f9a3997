"""Teacher targets computed once: the cache is exact, keyed by teacher and data, atomic, and used by training."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from cli_support import teacher_checkpoint
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import AllFramesSampler, UniformSampler
from lightning_distill.data import target_cache
from lightning_distill.data.target_cache import TargetCache, build_target_cache, cache_key, cache_path
from lightning_distill.errors import DataError
from lightning_distill.models import HRNN, MoEHead
from lightning_distill.training.losses import (
    ClassificationLoss,
    IntermediateRepresentationLoss,
    PredictionLoss,
    RepresentationLoss,
)
from lightning_distill.training.student import StudentModule
from test_datamodule import _records
from test_modules import StartingWeights, same
from store_writer import write_frame_store

SYNTHETIC_CLASSES = 8


def fake_teacher(batch) -> dict[str, torch.Tensor]:
    """A deterministic stand-in: mean frame as representation, its first classes' sigmoid as probabilities."""
    view = batch.views["teacher"]
    mean = view.frames.sum(1) / view.mask.sum(1, keepdim=True)
    return {"representation": mean, "probabilities": torch.sigmoid(mean[:, :6])}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "train.h5"
    write_frame_store(path, _records(0, [5, 9, 3, 12, 7, 1, 30]), level="frame", source_version="2018", num_classes=6)
    return path


def data_module(store, **kwargs) -> YT8MDataModule:
    return YT8MDataModule(train_files=str(store), num_classes=6, batch_size=3, reader_threads=0, max_frames=24,
                          val_fraction=0.0, **kwargs)


def targets(dm: YT8MDataModule, checkpoint) -> tuple[TargetCache, bool]:
    return dm.teacher_targets(fake_teacher, checkpoint=str(checkpoint), sampler=AllFramesSampler(),
                              device=torch.device("cpu"))


def test_cache_holds_the_teacher_outputs_of_every_video_in_store_order(store, tmp_path):
    checkpoint = tmp_path / "teacher.ckpt"
    checkpoint.write_bytes(b"teacher A")
    dm = data_module(store, views={"s": UniformSampler(2)})
    cache, built = targets(dm, checkpoint)
    assert built and len(cache) == 7
    # Independent truth: the teacher run on each video alone, from the stored frames.
    frames = FrameStore(store)
    for index in range(7):
        record = frames[index]
        q = np.concatenate([record.rgb, record.audio], axis=1)[:24].astype(np.float32)
        x = torch.from_numpy(q * np.float32(4 / 255) + np.float32(4 / 512 - 2))
        x = x / x.norm(dim=1, keepdim=True)
        expected = x.mean(0)
        assert torch.allclose(torch.from_numpy(cache.read(np.array([index]))["representation"][0]), expected, atol=1e-6)
    # Training batches carry their videos' rows, once attached.
    assert next(iter(dm.train_dataloader())).targets is None
    dm.use_teacher_targets([cache])
    batch = next(iter(dm.train_dataloader()))
    rows = cache.read(batch.indices.numpy())
    assert len(batch.targets) == 1
    assert np.array_equal(batch.targets[0]["representation"].numpy(), rows["representation"])
    assert np.array_equal(batch.targets[0]["probabilities"].numpy(), rows["probabilities"])


def test_a_new_teacher_or_changed_data_rebuilds_and_nothing_stale_is_used(store, tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    first.write_bytes(b"teacher A")
    second.write_bytes(b"teacher B")
    cache, built = targets(data_module(store), first)
    assert built
    again, built = targets(data_module(store), first)
    assert not built and again.path == cache.path
    other, built = targets(data_module(store), second)  # new teacher checkpoint
    assert built and other.path != cache.path
    # Changed data: the store rewritten with other frames (same ids and lengths).
    write_frame_store(store, _records(1, [5, 9, 3, 12, 7, 1, 30]), level="frame", source_version="2018", num_classes=6)
    changed, built = targets(data_module(store), first)
    assert built and changed.path != cache.path
    # Another view of the same store is another key too.
    view = {"sampler": "AllFramesSampler(k=None)", "normalization": "FrameL2Normalization()", "max_frames": 24,
            "precision": "32-true"}
    assert cache_key(first, FrameStore(store), view) != cache_key(first, FrameStore(store), {**view, "max_frames": 23})
    # A cache file is never read for another key.
    with pytest.raises(DataError, match="not a finished teacher-target cache"):
        TargetCache(changed.path, cache_key(second, FrameStore(store), view))


def test_a_checkpoint_is_hashed_once_for_all_its_caches_and_again_once_rewritten(store, tmp_path, monkeypatch):
    checkpoint = tmp_path / "teacher.ckpt"
    checkpoint.write_bytes(b"teacher A")
    view = {"max_frames": 24}
    opened = []
    monkeypatch.setattr(target_cache, "open", lambda path, mode: opened.append(path) or open(path, mode), raising=False)
    first = cache_key(checkpoint, FrameStore(store), view)
    # Another view (or store) of the same checkpoint: its bytes are not read again, and the key is what hashing them
    # afresh gives.
    other = cache_key(checkpoint, FrameStore(store), {"max_frames": 23})
    assert opened == [str(checkpoint)] and other != first
    expected = hashlib.sha256(b"teacher A")
    expected.update(FrameStore(store).fingerprint().encode())
    expected.update(json.dumps(view, sort_keys=True).encode())
    assert first == expected.hexdigest()
    # Rewritten (another size), it is read again and keys another cache.
    checkpoint.write_bytes(b"teacher AB")
    assert cache_key(checkpoint, FrameStore(store), view) != first and len(opened) == 2


def _build_slowly(store, key, started) -> None:
    def batches():
        for start in range(0, 7, 2):
            started.set()
            time.sleep(0.2)
            videos = np.arange(start, min(start + 2, 7))
            yield videos, {"representation": np.ones((len(videos), 4), np.float32),
                           "probabilities": np.ones((len(videos), 6), np.float32)}

    build_target_cache(store, key, batches)


def test_a_killed_build_leaves_nothing_that_is_used(store):
    key = "k" * 64
    context = multiprocessing.get_context("fork")
    started = context.Event()
    child = context.Process(target=_build_slowly, args=(store, key, started))
    child.start()
    assert started.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    leftovers = [p.name for p in store.parent.iterdir() if ".targets-" in p.name]
    assert not cache_path(store, key).exists() and any(".tmp-" in name for name in leftovers)

    def complete():
        yield np.arange(7), {"representation": np.full((7, 4), 2, np.float32),
                             "probabilities": np.full((7, 6), 0.5, np.float32)}

    cache, built = build_target_cache(store, key, complete)
    assert built and np.all(cache.read(np.arange(7))["representation"] == 2)
    assert not [p for p in store.parent.iterdir() if ".tmp-" in p.name]


def test_a_build_that_misses_videos_is_refused(store):
    def partial():
        yield np.arange(3), {"representation": np.zeros((3, 4), np.float32), "probabilities": np.zeros((3, 6), np.float32)}

    with pytest.raises(DataError, match="no targets for 4 videos"):
        build_target_cache(store, "m" * 64, partial)
    assert not cache_path(store, "m" * 64).exists()


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def student_losses(checkpoint, synthetic, tmp_path, mode: str, batch_size: int, loss=None, callbacks=(),
                   **module_args) -> tuple[list, object]:
    torch.manual_seed(0)
    dm = YT8MDataModule(train_files=f"{synthetic}/train*.tfrecord", store_dir=str(tmp_path / "stores"),
                        num_classes=SYNTHETIC_CLASSES, batch_size=batch_size, max_frames=40, val_fraction=0.0,
                        reader_threads=0)
    student = StudentModule(HRNN(hidden_size=32, num_layers=2, block_length=3), SYNTHETIC_CLASSES, str(checkpoint),
                            sampler=UniformSampler(6), head=MoEHead, teacher_targets=mode,
                            loss=loss or {"rep": RepresentationLoss(0.1), "pred": PredictionLoss(), "ce": ClassificationLoss()},
                            **module_args)
    recorder = StepLosses()
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[recorder, *callbacks], log_every_n_steps=1)
    trainer.fit(student, datamodule=dm)
    return recorder.losses, student


def test_a_student_from_cached_targets_trains_as_with_the_live_teacher(synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    # One batch of all 48 training videos, in store order whatever the shuffle: the cached rows were computed on
    # exactly the batch the live teacher sees, so every step's loss is the same to the bit.
    live, _ = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "live", batch_size=64)
    cached, student = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "cached", batch_size=64)
    assert student.teacher is None and student.frame_views("fit") == {"student": student.sampler}
    assert len(live) == len(cached) == 3 and {"train/loss/rep", "train/loss/pred"} <= live[0].keys()
    assert cached == live
    # Batches of 4: the live teacher sees other batches than the cache was built from, and batched float32 matmuls
    # round differently (measured: teacher outputs within 1e-6); the losses stay equal to float32 rounding.
    live, _ = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "live", batch_size=4)
    cached, _ = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "cached", batch_size=4)
    assert len(live) == len(cached) == 36
    for step_live, step_cached in zip(live, cached):
        assert step_cached == pytest.approx(step_live, rel=1e-4, abs=1e-6)


def test_a_student_from_cached_targets_starts_from_the_teachers_encoder(synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    started = StartingWeights()
    _, student = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "cached", batch_size=64,
                                callbacks=[started], encoder_from_teacher=True)
    assert student.teacher is None  # the teacher's weights were kept, the teacher itself was not
    for part, weights in {"encoder": started.encoder, "head": started.head}.items():
        assert same(weights, {k[len(part) + 1 :]: v for k, v in saved.items() if k.startswith(f"{part}.")})


def test_intermediate_states_keep_the_live_teacher(synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    loss = {"rep_i": IntermediateRepresentationLoss(), "ce": ClassificationLoss()}
    _, student = student_losses(checkpoint, synthetic_tfrecords, tmp_path, "cached", batch_size=64, loss=loss)
    assert student.teacher is not None and "teacher" in student.frame_views("fit")
    assert not list((tmp_path / "stores").glob("*.targets-*.h5"))


def test_targets_are_the_frozen_teachers_eval_mode_outputs():
    # A freshly loaded checkpoint is in train mode: NeXtVLAD's dropout (0.5) and batch statistics would make every
    # cached row a noisy draw (they did, until this test) instead of the teacher's prediction.
    from lightning_distill.data.batch import FrameView
    from lightning_distill.models import NeXtVLAD
    from lightning_distill.training.teacher_targets import video_outputs
    from lightning_distill.training.teacher import TeacherModule

    torch.manual_seed(0)
    teacher = TeacherModule(NeXtVLAD(num_clusters=4, groups=2, expansion=2, hidden_size=16, dropout=0.5), 6)
    assert teacher.training
    view = FrameView(frames=torch.randn(3, 5, 1152), mask=torch.ones(3, 5, dtype=torch.bool), positions=None)
    first, second = video_outputs(teacher, view), video_outputs(teacher, view)
    assert torch.equal(first["probabilities"], second["probabilities"])  # no dropout draw
    with torch.no_grad():
        expected = teacher.eval()(view)
    assert torch.allclose(first["representation"], expected.representation)
    assert torch.allclose(first["probabilities"], expected.probabilities)
