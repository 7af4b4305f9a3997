"""A student of several teachers: the ensemble's targets, the adapter, per-teacher inputs, and cached targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from cli_support import teacher_checkpoint
from conftest import SYNTHETIC_CLASSES
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.normalization import (
    FrameL2Normalization,
    ReverseWhitening,
    normalization_config,
    normalizer_from_config,
)
from lightning_distill.data.samplers import UniformSampler
from lightning_distill.data.yt8m import DEQUANT_BIAS, DEQUANT_SCALE
from lightning_distill.errors import ConfigError
from lightning_distill.models import HRNN, MoEHead
from lightning_distill.training.checkpoints import load_module, read_checkpoint
from lightning_distill.training.ensemble import RepresentationAdapter, ensemble_output
from lightning_distill.training.losses import (
    ClassificationLoss,
    IntermediateRepresentationLoss,
    PredictionLoss,
    RepresentationLoss,
)
from lightning_distill.training.module import INPUT_NORMALIZATION
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher import TeacherModule


def output(representation, probabilities) -> ModelOutput:
    return ModelOutput(torch.tensor(representation), None, torch.tensor(probabilities), None, None)


def test_the_ensemble_averages_probabilities_and_puts_representations_side_by_side():
    a = output([[1.0, 2.0]], [[0.2, 0.8, 0.5]])
    b = output([[3.0, 4.0, 5.0]], [[0.6, 0.4, 0.1]])
    both = ensemble_output([a, b])
    assert both.representation.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    assert both.probabilities[0].tolist() == pytest.approx([0.4, 0.6, 0.3])
    assert ensemble_output([a]) is a
    # Only the represented teachers' parts are compared by L_rep; every teacher's probabilities still count.
    own = ensemble_output([a, b], represented=[True, False])
    assert own.representation.tolist() == [[1.0, 2.0]] and own.probabilities[0].tolist() == pytest.approx([0.4, 0.6, 0.3])


def test_the_adapter_keeps_a_same_family_part_and_projects_the_others():
    torch.manual_seed(0)
    adapter = RepresentationAdapter(4, [4, 3], projected=[False, True])
    student = torch.randn(2, 4)
    adapted = adapter(student)
    assert adapted.shape == (2, 7)
    assert torch.equal(adapted[:, :4], student)
    projection = adapter.projections[1]
    assert torch.allclose(adapted[:, 4:], student @ projection.weight.T + projection.bias)
    with pytest.raises(ValueError, match="student's size"):
        RepresentationAdapter(4, [5], projected=[False])


def test_a_normalisation_record_rebuilds_only_known_normalisers():
    record = normalization_config(ReverseWhitening(epsilon=0.5))
    assert record == {"class_path": "lightning_distill.data.normalization.ReverseWhitening",
                      "init_args": {"eigenvalues": None, "epsilon": 0.5}}
    rebuilt = normalizer_from_config(record, "checkpoint t.ckpt")
    assert repr(rebuilt) == repr(ReverseWhitening(epsilon=0.5))
    assert repr(normalizer_from_config(normalization_config(FrameL2Normalization()), "x")) == "FrameL2Normalization()"
    with pytest.raises(ConfigError, match=r"checkpoint t.ckpt records the input normalisation 'os.system'"):
        normalizer_from_config({"class_path": "os.system", "init_args": {"command": "true"}}, "checkpoint t.ckpt")
    with pytest.raises(ConfigError, match="refuses"):
        normalizer_from_config({"class_path": record["class_path"], "init_args": {"bogus": 1}}, "checkpoint t.ckpt")


def hrnn_student(teacher, **kwargs) -> StudentModule:
    loss = kwargs.pop("loss", None) or {"rep": RepresentationLoss(form="standardized"), "pred": PredictionLoss(),
                                        "ce": ClassificationLoss()}
    return StudentModule(HRNN(hidden_size=32, num_layers=2, block_length=3), SYNTHETIC_CLASSES, teacher,
                         sampler=UniformSampler(6), head=MoEHead, loss=loss, **kwargs)


def data_module(synthetic, tmp_path) -> YT8MDataModule:
    return YT8MDataModule(train_files=f"{synthetic}/train*.tfrecord", test_files=f"{synthetic}/test*.tfrecord",
                          store_dir=str(tmp_path / "stores"), num_classes=SYNTHETIC_CLASSES, batch_size=16,
                          max_frames=40, val_fraction=0.0, reader_threads=0)


def fit(student, synthetic, tmp_path, **trainer) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=str(tmp_path), **trainer)
    trainer.fit(student, datamodule=data_module(synthetic, tmp_path))
    return trainer


@pytest.fixture(scope="module")
def teachers(synthetic_tfrecords, tmp_path_factory):
    """A tiny H-RNN and a tiny NeXtVLAD teacher (one step each), trained by ``vdistill fit``."""
    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        for family in ("hrnn", "nextvlad"):
            folder = tmp_path_factory.mktemp(family)
            patch.chdir(folder)
            paths[family] = teacher_checkpoint(f"student_{family}.yaml", synthetic_tfrecords, folder)
    return paths


def test_teachers_record_the_inputs_they_were_trained_on(teachers):
    assert read_checkpoint(teachers["nextvlad"], weights=False)[INPUT_NORMALIZATION]["class_path"].endswith(
        "ReverseWhitening"
    )
    assert read_checkpoint(teachers["hrnn"], weights=False)[INPUT_NORMALIZATION]["class_path"].endswith(
        "FrameL2Normalization"
    )


def test_an_ensemble_student_trains_from_each_teachers_cached_targets(teachers, synthetic_tfrecords, tmp_path):
    student = hrnn_student(str(teachers["hrnn"]), ensemble_teachers=[str(teachers["nextvlad"])])
    trainer = fit(student, synthetic_tfrecords, tmp_path)
    assert student.teacher is None and student.frame_views("fit") == {"student": student.sampler}
    caches = sorted((tmp_path / "stores").glob("train.targets-*.h5"))
    assert len(caches) == 2
    # The H-RNN part is the student's own representation (the paper's L_rep); NeXtVLAD's is projected.
    nextvlad = load_module(TeacherModule, teachers["nextvlad"]).eval()
    kinds = [type(p).__name__ for p in student.adapter.projections]
    assert kinds == ["Identity", "Linear"]
    assert student.adapter.projections[1].out_features == nextvlad.encoder.output_dim
    # NeXtVLAD's targets are its outputs on the inputs it was trained on (reverse-whitened), not the student's.
    store = FrameStore(tmp_path / "stores" / "train.h5")
    record = store[0]
    frames = np.concatenate([record.rgb, record.audio], axis=1)[:40].astype(np.float32)
    x = torch.from_numpy(frames * np.float32(DEQUANT_SCALE) + np.float32(DEQUANT_BIAS))[None]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        expected = nextvlad.encoder(ReverseWhitening()(x, mask), mask).representation[0]
    (batch,) = [b for b in trainer.datamodule.train_dataloader() if 0 in b.indices.tolist()]
    cached = [rows["representation"] for rows in batch.targets]
    assert [c.shape[1] for c in cached] == [student.encoder.output_dim, nextvlad.encoder.output_dim]
    assert torch.allclose(cached[1][batch.indices.tolist().index(0)], expected, atol=1e-4)
    # A second ensemble student reuses both caches, as single-teacher students do: nothing is rebuilt.
    stamps = [path.stat().st_mtime_ns for path in caches]
    fit(hrnn_student(str(teachers["hrnn"]), ensemble_teachers=[str(teachers["nextvlad"])]), synthetic_tfrecords,
        tmp_path)
    assert [path.stat().st_mtime_ns for path in sorted((tmp_path / "stores").glob("train.targets-*.h5"))] == stamps
    # Its checkpoint is evaluated without any teacher: the adapter served only the fit.
    checkpoint = tmp_path / "student.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert any(key.startswith("adapter.") for key in torch.load(checkpoint, weights_only=True)["state_dict"])
    evaluated = hrnn_student(None, loss={"ce": ClassificationLoss()})
    tester = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = tester.test(evaluated, datamodule=data_module(synthetic_tfrecords, tmp_path), ckpt_path=checkpoint,
                             verbose=False)
    assert 0 < metrics["test/gap"] <= 1 and evaluated.adapter is None


def test_its_own_teachers_cache_is_shared_with_single_teacher_students(teachers, synthetic_tfrecords, tmp_path):
    fit(hrnn_student(str(teachers["hrnn"])), synthetic_tfrecords, tmp_path)
    (single,) = (tmp_path / "stores").glob("train.targets-*.h5")
    fit(hrnn_student(str(teachers["hrnn"]), ensemble_teachers=[str(teachers["nextvlad"])]), synthetic_tfrecords,
        tmp_path)
    assert single in set((tmp_path / "stores").glob("train.targets-*.h5"))
    assert len(list((tmp_path / "stores").glob("train.targets-*.h5"))) == 2


def test_a_student_of_another_family_alone_starts_its_head_from_scratch(teachers, synthetic_tfrecords, tmp_path):
    student = hrnn_student(None, ensemble_teachers=[str(teachers["nextvlad"])])
    fit(student, synthetic_tfrecords, tmp_path, max_steps=1)
    assert [type(p).__name__ for p in student.adapter.projections] == ["Linear"]


def test_an_ensemble_students_representation_may_be_compared_with_its_own_familys_teachers_only(
    teachers, synthetic_tfrecords, tmp_path
):
    student = hrnn_student(str(teachers["hrnn"]), ensemble_teachers=[str(teachers["nextvlad"])],
                           ensemble_representation="own")
    trainer = fit(student, synthetic_tfrecords, tmp_path, max_steps=1)
    assert [type(p).__name__ for p in student.adapter.projections] == ["Identity"]
    batch = next(iter(trainer.datamodule.train_dataloader()))
    outputs = student.model_step(trainer.datamodule.on_after_batch_transfer(batch, 0))
    # L_rep against the H-RNN teacher's representation alone; L_pred against both teachers' mean probabilities.
    assert torch.equal(outputs["teacher"].representation, batch.targets[0]["representation"])
    mean = (batch.targets[0]["probabilities"] + batch.targets[1]["probabilities"]) / 2
    assert torch.allclose(outputs["teacher"].probabilities, mean)
    # Without a teacher of the student's family there is nothing to compare its representation with.
    with pytest.raises(ConfigError, match="ensemble_representation: own, but no teacher .* is of the student's family"):
        fit(hrnn_student(None, ensemble_teachers=[str(teachers["nextvlad"])], ensemble_representation="own"),
            synthetic_tfrecords, tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="ensemble_representation must be 'every' or 'own'"):
        hrnn_student(str(teachers["hrnn"]), ensemble_representation="both")


def test_ensembles_need_cached_video_level_targets(teachers):
    nextvlad = [str(teachers["nextvlad"])]
    with pytest.raises(ConfigError, match="ensemble_teachers are distilled from cached targets"):
        hrnn_student(str(teachers["hrnn"]), ensemble_teachers=nextvlad, teacher_targets="live")
    with pytest.raises(ConfigError, match="not L_rep\\^I"):
        hrnn_student(str(teachers["hrnn"]), ensemble_teachers=nextvlad,
                     loss={"rep_i": IntermediateRepresentationLoss(), "ce": ClassificationLoss()})


def test_a_live_teacher_must_see_the_inputs_it_was_trained_on(teachers, synthetic_tfrecords, tmp_path):
    checkpoint = torch.load(teachers["hrnn"], weights_only=True)
    checkpoint[INPUT_NORMALIZATION] = normalization_config(ReverseWhitening())
    other = tmp_path / "whitened-teacher.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(ConfigError, match=r"was trained on ReverseWhitening\(.*\) inputs but the data gives "
                                          r"FrameL2Normalization\(\): use teacher_targets: cached"):
        fit(hrnn_student(str(other), teacher_targets="live"), synthetic_tfrecords, tmp_path)
