"""The Lightning modules: teacher, Serial student, Parallel teacher + student, on tiny in-memory videos."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.samplers import (
    AllFramesSampler,
    AnyKSampler,
    FirstSampler,
    FrameSampler,
    RandomSampler,
    UniformSampler,
)
from lightning_distill.errors import ConfigError, DataError
from lightning_distill.models import HRNN, MoEHead, NetVLAD, NeXtVLAD
from lightning_distill.training.early_stopping import DelayedEarlyStopping
from lightning_distill.training.losses import classification_loss
from lightning_distill.training import (
    ClassificationLoss,
    DistillModule,
    IntermediateRepresentationLoss,
    LossTerm,
    PredictionLoss,
    RepresentationLoss,
    StudentModule,
    TeacherModule,
    VideoClassifierModule,
)

NUM_CLASSES = 5
DIM = 32  # small frames keep the tests fast; the encoders take input_dim as an argument
MAX_FRAMES = 16


class TinyVideos(L.LightningDataModule):
    """Random videos whose labels are visible in every frame; serves the views the module asks for.

    Frames are noise plus one fixed pattern per true class, so any encoder can learn the labels.
    """

    def __init__(self, num_videos: int = 24, batch_size: int = 8, seed: int = 0, max_frames: int = MAX_FRAMES):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.max_frames = max_frames
        self.batch_size = batch_size
        self.lengths = torch.randint(4, max_frames + 1, (num_videos,), generator=g)
        self.labels = (torch.rand(num_videos, NUM_CLASSES, generator=g) < 0.4).float()
        patterns = torch.randn(NUM_CLASSES, DIM, generator=g)
        noise = 0.5 * torch.randn(num_videos, max_frames, DIM, generator=g)
        self.frames = noise + (self.labels @ patterns)[:, None, :]
        self.frames[torch.arange(max_frames)[None, :] >= self.lengths[:, None]] = 0.0
        self.ids = [f"vid{i:03d}" for i in range(num_videos)]

    def batches(self, views: dict[str, FrameSampler]) -> list[VideoBatch]:
        out = []
        for start in range(0, len(self.ids), self.batch_size):
            rows = slice(start, start + self.batch_size)
            lengths = self.lengths[rows]
            built = {}
            for name, sampler in views.items():
                positions = sampler.indices(lengths)
                mask = positions >= 0
                frames = self.frames[rows].gather(1, positions.clamp(min=0)[..., None].expand(-1, -1, DIM))
                built[name] = FrameView(frames * mask[..., None], mask, positions)
            out.append(VideoBatch(self.ids[rows], self.labels[rows], lengths, built))
        return out

    def _loader(self, stage: str) -> DataLoader:
        # batch_size=None: the items already are batches; the identity collate keeps them VideoBatch objects.
        batches = self.batches(self.trainer.lightning_module.frame_views(stage))
        return DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)

    def train_dataloader(self):
        return self._loader("fit")

    def val_dataloader(self):
        return self._loader("validate")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("predict")


def trainer(**kwargs) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return L.Trainer(**{**settings, **kwargs})


def hrnn(**kwargs) -> HRNN:
    return HRNN.tiny(input_dim=DIM, **kwargs)


def teacher_module(encoder=None, **kwargs) -> TeacherModule:
    return TeacherModule(encoder or hrnn(), num_classes=NUM_CLASSES, **kwargs)


TINY_HRNN = {"class_path": "lightning_distill.models.HRNN", "init_args": {"input_dim": DIM, "hidden_size": 16,
                                                                          "num_layers": 2, "block_length": 4}}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A TeacherModule (tiny H-RNN, blocks of 4) trained a few steps, built from its config as `vdistill fit` does,
    so its checkpoint records its hyper-parameters as plain data."""
    torch.manual_seed(0)
    module = cli_model("TeacherModule", {"encoder": TINY_HRNN, "num_classes": NUM_CLASSES})
    t = trainer(max_steps=6)
    t.fit(module, datamodule=TinyVideos())
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    t.save_checkpoint(path)
    return path


def ce_on(module, data: TinyVideos) -> float:
    """L_CE of the module's predicting model over all videos, in eval mode."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        batches = data.batches(module.frame_views("predict"))
        ce = sum(
            float(classification_loss(module(b.views[module.predicting_role]).probabilities, b.labels))
            for b in batches
        )
    module.train(was_training)
    return ce / len(batches)


@pytest.mark.parametrize(
    "encoder",
    [lambda: hrnn(), lambda: NetVLAD.tiny(input_dim=DIM, rgb_dim=24), lambda: NeXtVLAD.tiny(input_dim=DIM, rgb_dim=24)],
    ids=["HRNN", "NetVLAD", "NeXtVLAD"],
)
def test_teacher_loss_falls(encoder):
    torch.manual_seed(0)
    data = TinyVideos()
    module = teacher_module(encoder(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    before = ce_on(module, data)
    trainer(max_steps=12).fit(module, datamodule=data)
    assert ce_on(module, data) < 0.7 * before


def test_teacher_logs_losses_and_metrics_and_predicts(tmp_path):
    torch.manual_seed(0)
    data = TinyVideos()
    module = teacher_module()
    t = trainer(max_steps=3, limit_val_batches=None, max_epochs=1)
    t.fit(module, datamodule=data)
    logged = set(t.callback_metrics)
    assert {"train/loss", "train/loss/ce"} <= logged
    assert {f"val/{m}" for m in ("gap", "map", "map_all_classes", "hit_at_one", "perr")} <= logged

    predictions = t.predict(module, datamodule=data)
    ids = [i for p in predictions for i in p["video_ids"]]
    probs = torch.cat([p["probabilities"] for p in predictions])
    assert ids == data.ids and probs.shape == (len(data.ids), NUM_CLASSES)

    t.test(module, datamodule=data)
    # test/hit_at_one against its definition on the predicted probabilities.
    hit_at_one = data.labels.gather(1, probs.argmax(1, keepdim=True)).mean()
    assert float(t.callback_metrics["test/hit_at_one"]) == pytest.approx(float(hit_at_one))


def test_paper_optimiser_and_schedule_are_configured_per_epoch():
    module = teacher_module(
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
    )
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["lr_scheduler"]["scheduler"].gamma == 0.95
    assert config["optimizer"].param_groups[0]["lr"] == 1e-3


def test_frame_views_per_stage(teacher_ckpt):
    all_frames, uniform = AllFramesSampler(), UniformSampler(8)
    teacher = teacher_module(sampler=uniform)
    for stage in ("fit", "validate", "test", "predict"):
        assert teacher.frame_views(stage) == {"teacher": uniform}

    student = StudentModule(hrnn(), NUM_CLASSES, str(teacher_ckpt), sampler=uniform, teacher_sampler=all_frames)
    assert student.frame_views("fit") == {"teacher": all_frames, "student": uniform}
    for stage in ("validate", "test", "predict"):
        assert student.frame_views(stage) == {"student": uniform}
    ce_only = StudentModule(hrnn(), NUM_CLASSES, None, sampler=uniform, loss={"ce": ClassificationLoss()})
    assert ce_only.frame_views("fit") == {"student": uniform}

    parallel = DistillModule(hrnn(), NUM_CLASSES, hrnn(), sampler=uniform, teacher_sampler=all_frames)
    for stage in ("fit", "validate", "test"):
        assert parallel.frame_views(stage) == {"teacher": all_frames, "student": uniform}
    assert parallel.frame_views("predict") == {"student": uniform}


@pytest.mark.parametrize("kind", ["baseline", "parallel"])
def test_a_model_trains_on_its_train_sampler_and_is_evaluated_on_its_sampler(kind):
    """A from-scratch baseline (TeacherModule) or a Parallel student with ``train_sampler=RandomSampler(4)``: its
    training batches hold random frames, its validation batches the Uniform-4 frames it is tested on."""
    torch.manual_seed(0)
    uniform, random = UniformSampler(4), RandomSampler(4)
    if kind == "baseline":
        module, role = teacher_module(hrnn(block_length=2), sampler=uniform, train_sampler=random), "teacher"
    else:
        module, role = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=uniform,
                                     train_sampler=random), "student"
    assert module.frame_views("fit")[role] is random
    assert all(module.frame_views(stage)[role] is uniform for stage in ("validate", "test", "predict"))
    seen = {"train": [], "val": []}

    class RecordPositions(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["train"].append((batch.lengths, batch.views[role].positions))

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            seen["val"].append((batch.lengths, batch.views[role].positions))

    trainer(max_steps=3, limit_val_batches=3, callbacks=[RecordPositions()]).fit(module, datamodule=TinyVideos())
    assert seen["train"] and seen["val"]
    assert all(torch.equal(positions, uniform.indices(lengths)) for lengths, positions in seen["val"])
    assert not all(torch.equal(positions, uniform.indices(lengths)) for lengths, positions in seen["train"])


def test_a_train_sampler_k_that_the_blocks_do_not_tile_is_a_config_error():
    with pytest.raises(ConfigError, match="k=3 is not a multiple of the teacher's training view's HRNN"):
        teacher_module(hrnn(block_length=2), sampler=UniformSampler(4), train_sampler=RandomSampler(3))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StartingWeights(L.Callback):
    """Records the encoder's and head's weights as training starts: after a fit's starting weights are loaded."""

    def on_train_start(self, trainer, module):
        self.encoder, self.head = state(module.encoder), state(module.head)


def test_serial_student_keeps_teacher_frozen_and_starts_from_its_head(teacher_ckpt, tmp_path):
    torch.manual_seed(0)
    saved = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    teacher_head = {k[len("head.") :]: v for k, v in saved.items() if k.startswith("head.")}
    teacher_all = {k: v for k, v in saved.items() if k.startswith(("encoder.", "head."))}
    # L_rep alone gives the head no gradient: after fitting it must still be the teacher's head exactly.
    student = StudentModule(
        hrnn(block_length=2),
        NUM_CLASSES,
        str(teacher_ckpt),
        sampler=UniformSampler(4),
        loss={"rep": RepresentationLoss()},
    )
    encoder_before = state(student.encoder)
    teacher_modes = []

    class RecordTeacherMode(L.Callback):
        def on_train_start(self, trainer, module):
            module.teacher.register_forward_pre_hook(lambda teacher, args: teacher_modes.append(teacher.training))

    t = trainer(max_steps=4, callbacks=[RecordTeacherMode()])
    t.fit(student, datamodule=TinyVideos())

    assert same(state(student.head), teacher_head)
    assert not same(state(student.encoder), encoder_before)
    frozen = {k: v for k, v in state(student.teacher).items() if k in teacher_all}
    assert same(frozen, teacher_all)
    assert teacher_modes == [False] * 4  # the teacher ran in eval mode at every training step
    assert not any(p.requires_grad for p in student.teacher.parameters())


def test_serial_student_checkpoint_has_no_teacher_and_evaluates_without_it(teacher_ckpt, tmp_path):
    torch.manual_seed(0)
    teacher_copy = tmp_path / "teacher.ckpt"
    teacher_copy.write_bytes(teacher_ckpt.read_bytes())
    data = TinyVideos()
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_copy), sampler=UniformSampler(4))
    t = trainer(max_steps=3)
    t.fit(student, datamodule=data)
    student_ckpt = tmp_path / "student.ckpt"
    t.save_checkpoint(student_ckpt)
    expected = torch.cat([p["probabilities"] for p in trainer().predict(student, datamodule=data)])

    keys = torch.load(student_ckpt, weights_only=True)["state_dict"].keys()
    assert not any(k.startswith("teacher.") for k in keys)
    assert any(k.startswith("encoder.") for k in keys) and any(k.startswith("head.") for k in keys)

    teacher_copy.unlink()
    # Built in Python, the student's checkpoint keeps plain hyper-parameters only: the objects are given back.
    restored = StudentModule.load_from_checkpoint(student_ckpt, weights_only=True, encoder=hrnn(block_length=2),
                                                  sampler=UniformSampler(4))
    assert restored.teacher is None
    predicted = torch.cat([p["probabilities"] for p in trainer().predict(restored, datamodule=data)])
    assert torch.equal(predicted, expected)
    tester = trainer()
    tester.test(restored, datamodule=data)
    assert "test/gap" in tester.callback_metrics


# These tests' in-memory loader is not resumable (vdistill's is: tests/test_runs.py resumes mid-epoch).
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_serial_student_resumes_from_its_checkpoint(teacher_ckpt, tmp_path):
    torch.manual_seed(0)
    data = TinyVideos()
    make = lambda: StudentModule(hrnn(), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(8))  # noqa: E731
    first_module, first = make(), trainer(max_steps=2)
    first.fit(first_module, datamodule=data)
    path = tmp_path / "student.ckpt"
    first.save_checkpoint(path)
    teacher_saved = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    assert not torch.equal(first_module.head.linear.weight, teacher_saved["head.linear.weight"])

    started = StartingWeights()
    resumed, second = make(), trainer(max_steps=4, callbacks=[started])
    second.fit(resumed, datamodule=data, ckpt_path=path, weights_only=True)
    assert second.global_step == 4
    # The resumed head is the checkpoint's, not re-initialised from the teacher's.
    assert same(started.head, state(first_module.head))
    teacher_now = state(resumed.teacher)
    assert all(torch.equal(teacher_now[k], v) for k, v in teacher_saved.items() if k.startswith(("encoder.", "head.")))


def test_any_k_student_trains_at_drawn_ks_and_is_evaluated_at_a_k_chosen_at_run_time(teacher_ckpt, tmp_path):
    torch.manual_seed(0)
    data = TinyVideos(num_videos=48, batch_size=4)
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                            train_sampler=AnyKSampler([2, 4, 6]))
    assert isinstance(student.frame_views("fit")["student"], AnyKSampler)
    assert student.frame_views("validate") == {"student": student.sampler}
    widths = []

    class RecordWidths(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            widths.append(batch.views["student"].frames.shape[1])

    fitter = trainer(max_steps=12, callbacks=[RecordWidths()])
    fitter.fit(student, datamodule=data)
    assert set(widths) == {2, 4, 6}  # 12 batches, a k drawn for each
    path = tmp_path / "any_k.ckpt"
    fitter.save_checkpoint(path)

    # The same weights evaluated at two ks: the k is the sampler given when the checkpoint is loaded.
    predictions = {}
    for k in (2, 6):
        module = StudentModule.load_from_checkpoint(path, weights_only=True, encoder=hrnn(block_length=2),
                                                    sampler=UniformSampler(k))
        assert module.frame_views("predict")["student"].k == k
        batches = trainer().predict(module, datamodule=data)
        predictions[k] = torch.cat([b["probabilities"] for b in batches])
        assert same(state(module.encoder), state(student.encoder))
    assert not torch.allclose(predictions[2], predictions[6])


def test_any_k_student_is_validated_at_each_of_its_validation_ks_and_their_mean(teacher_ckpt, tmp_path):
    torch.manual_seed(0)
    data = TinyVideos(num_videos=48, batch_size=4)
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                            train_sampler=AnyKSampler([2, 4, 6]), validation_ks=[6, 2, 4])
    assert "student_k2" not in student.frame_views("fit")  # training still reads the drawn k only
    # At k = 4 the student's own view (UniformSampler(4)) is validated: no second read of the same frames.
    assert list(student.frame_views("validate")) == ["student", "student_k2", "student_k6"]
    fitter = trainer(max_steps=6)
    fitter.fit(student, datamodule=data)
    path = tmp_path / "any_k.ckpt"
    fitter.save_checkpoint(path)
    logged = trainer(limit_val_batches=None).validate(student, datamodule=data)[0]
    # Each k's GAP is what validating the same weights at that k alone gives; the mean is over the ks.
    for k in (2, 4, 6):
        alone = StudentModule.load_from_checkpoint(path, weights_only=True, encoder=hrnn(block_length=2),
                                                   sampler=UniformSampler(k), validation_ks=None)
        (result,) = trainer(limit_val_batches=None).validate(alone, datamodule=data)
        assert set(result) == {"val/gap", "val/map", "val/map_all_classes", "val/hit_at_one", "val/perr"}
        assert result["val/gap"] == pytest.approx(logged[f"val/k{k}/gap"], abs=1e-6)
    assert logged["val/k4/gap"] == logged["val/gap"]
    assert logged["val/any_k/gap"] == pytest.approx(sum(logged[f"val/k{k}/gap"] for k in (2, 4, 6)) / 3)
    assert len({logged["val/k2/gap"], logged["val/k6/gap"]}) == 2
    # The training scheme at each k (random frames for a student trained on random frames).
    random = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                           train_sampler=AnyKSampler([2, 4], selection="random"), validation_ks=[2])
    assert {name: (type(v), v.k) for name, v in random.frame_views("validate").items()} == {
        "student": (UniformSampler, 4), "student_k2": (RandomSampler, 2)}


@pytest.mark.parametrize("settings, message", [
    ({"train_sampler": UniformSampler(4), "validation_ks": [2]}, "validation_ks=\\[2\\] validates an any-k student"),
    ({"train_sampler": AnyKSampler([2, 4]), "validation_ks": [0, 2]}, "list frame counts >= 1"),
    ({"train_sampler": AnyKSampler([2, 4]), "validation_ks": [3]}, "k=3 is not a multiple"),
])
def test_bad_validation_ks_are_config_errors(teacher_ckpt, settings, message):
    with pytest.raises(ConfigError, match=message):
        StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4), **settings)


def test_any_k_student_with_every_batch_ks_trains_each_batch_at_the_drawn_and_those_ks(teacher_ckpt):
    torch.manual_seed(0)
    data = TinyVideos(num_videos=48, batch_size=4)
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                            train_sampler=AnyKSampler([2, 4, 6], every_batch=[2, 6]), teacher_targets="live")
    assert student.frame_views("validate") == {"student": student.sampler}
    widths = []

    class RecordWidths(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            widths.append({name: view.frames.shape[1] for name, view in batch.views.items()})

    trainer(max_steps=12, callbacks=[RecordWidths()]).fit(student, datamodule=data)
    assert {w["student"] for w in widths} == {2, 4, 6}
    assert all(w["student_k2"] == 2 and w["student_k6"] == 6 and "teacher" in w for w in widths)

    # The minimised total is every view's total summed: here L_CE by hand on each view's probabilities.
    ce_only = StudentModule(hrnn(block_length=2), NUM_CLASSES, sampler=UniformSampler(4),
                            train_sampler=AnyKSampler([2, 4, 6], every_batch=[2, 6]),
                            loss={"ce": ClassificationLoss()})
    views = {"student": UniformSampler(4), "student_k2": UniformSampler(2), "student_k6": UniformSampler(6)}
    batch = data.batches(views)[0]
    outputs = ce_only.model_step(batch)
    losses = ce_only.losses(outputs, batch.labels)
    by_hand = {name: classification_loss(outputs[name].probabilities, batch.labels) for name in views}
    assert torch.allclose(losses["loss/ce"], by_hand["student"])
    assert torch.allclose(losses["k2/loss/ce"], by_hand["student_k2"])
    assert torch.allclose(losses["k6/loss/ce"], by_hand["student_k6"])
    assert torch.allclose(losses["loss"], sum(by_hand.values()))


@pytest.mark.parametrize("make", [
    lambda sampler: teacher_module(train_sampler=sampler),
    lambda sampler: DistillModule(hrnn(block_length=2), NUM_CLASSES, sampler=UniformSampler(4), train_sampler=sampler),
])
def test_every_batch_ks_outside_a_student_are_a_config_error(make):
    with pytest.raises(ConfigError, match="AnyKSampler\\(every_batch=...\\) would be ignored"):
        make(AnyKSampler([2, 4], every_batch=[4]))


def test_any_k_student_checks_every_k_against_the_blocks(teacher_ckpt):
    with pytest.raises(ConfigError, match="k=3 is not a multiple"):
        StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                      train_sampler=AnyKSampler([2, 3, 4]))


def test_two_stage_rep_recipe(teacher_ckpt, tmp_path):
    """Stage 1 fits L_rep alone; stage 2 fits L_CE from the stage-1 weights, without the teacher."""
    torch.manual_seed(0)
    data = TinyVideos()
    stage1 = StudentModule(
        hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
        loss={"rep": RepresentationLoss()},
    )
    t1 = trainer(max_steps=3)
    t1.fit(stage1, datamodule=data)
    stage1_path = tmp_path / "stage1.ckpt"
    t1.save_checkpoint(stage1_path)

    stage2 = StudentModule(
        hrnn(block_length=2), NUM_CLASSES, None, sampler=UniformSampler(4),
        loss={"ce": ClassificationLoss()}, init_from=str(stage1_path),
    )
    assert stage2.frame_views("fit") == {"student": stage2.sampler}
    started = StartingWeights()
    t2 = trainer(max_steps=8, callbacks=[started])
    t2.fit(stage2, datamodule=data)
    assert same(started.encoder, state(stage1.encoder)) and same(started.head, state(stage1.head))
    assert stage2.teacher is None
    assert ce_on(stage2, data) < ce_on(stage1, data)


@pytest.mark.parametrize(
    "student_encoder, names",
    [
        (lambda: NetVLAD.tiny(input_dim=DIM, rgb_dim=24), ("HRNN(", "NetVLAD(")),
        (lambda: hrnn(hidden_size=8), ("hidden_size=16", "hidden_size=8")),
    ],
    ids=["family", "size"],
)
def test_student_of_another_architecture_is_a_config_error(teacher_ckpt, student_encoder, names):
    student = StudentModule(student_encoder(), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(8))
    with pytest.raises(ConfigError) as error:
        trainer().fit(student, datamodule=TinyVideos())
    message = str(error.value)
    assert all(name in message for name in names) and "\n" not in message
    assert "teacher checkpoint" in message and "use a student of the teacher's family" in message


def test_a_student_head_can_start_from_scratch_instead_of_the_teachers(teacher_ckpt):
    saved = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    teacher_head = {k[len("head.") :]: v for k, v in saved.items() if k.startswith("head.")}
    torch.manual_seed(0)
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                            loss={"pred": PredictionLoss(), "ce": ClassificationLoss()}, head_from_teacher=False)
    fresh = state(student.head)
    started = StartingWeights()
    t = trainer(max_steps=1, callbacks=[started])
    t.fit(student, datamodule=TinyVideos())
    # Training started from the head's own random weights, not the teacher's.
    assert same(started.head, fresh) and not same(started.head, teacher_head)
    with pytest.raises(ConfigError, match="no loss term trains the head"):
        StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                      loss={"rep": RepresentationLoss()}, head_from_teacher=False)


def test_a_student_encoder_can_start_from_the_teachers(teacher_ckpt, tmp_path):
    """encoder_from_teacher: the student's first step sees the teacher's trained encoder (its blocks may differ)."""
    saved = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    teacher_parts = {part: {k[len(part) + 1 :]: v for k, v in saved.items() if k.startswith(part + ".")}
                     for part in ("encoder", "head")}
    started = StartingWeights()
    torch.manual_seed(0)
    student = StudentModule(hrnn(block_length=2), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(4),
                            loss={"ce": ClassificationLoss()}, encoder_from_teacher=True)
    trainer(max_steps=2, callbacks=[started]).fit(student, datamodule=TinyVideos())
    assert same(started.encoder, teacher_parts["encoder"]) and same(started.head, teacher_parts["head"])
    assert not same(state(student.encoder), teacher_parts["encoder"])  # and then it trains

    with pytest.raises(ConfigError, match="encoder_from_teacher is true but teacher_checkpoint is not set"):
        StudentModule(hrnn(block_length=2), NUM_CLASSES, None, sampler=UniformSampler(4),
                      loss={"ce": ClassificationLoss()}, encoder_from_teacher=True)
    # A second stage starts from its first stage's weights, whatever the first started from.
    stage1 = tmp_path / "stage1.ckpt"
    trainer(max_steps=1).fit(student, datamodule=TinyVideos())
    student.trainer.save_checkpoint(stage1)
    stage2 = StudentModule(hrnn(block_length=2), NUM_CLASSES, None, sampler=UniformSampler(4),
                           loss={"ce": ClassificationLoss()}, init_from=str(stage1), encoder_from_teacher=True)
    trainer(max_steps=1, callbacks=[started]).fit(stage2, datamodule=TinyVideos())
    assert same(started.encoder, state(student.encoder))


def test_student_head_of_another_kind_is_a_config_error(teacher_ckpt):
    student = StudentModule(hrnn(), NUM_CLASSES, str(teacher_ckpt), sampler=UniformSampler(8), head=MoEHead)
    with pytest.raises(ConfigError, match="LogisticHead head .* MoEHead"):
        trainer().fit(student, datamodule=TinyVideos())


def test_k_not_a_multiple_of_the_block_length_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        StudentModule(hrnn(block_length=3), NUM_CLASSES, None, sampler=UniformSampler(10),
                      loss={"ce": ClassificationLoss()})
    assert str(error.value) == (
        "k=10 is not a multiple of the student's HRNN block_length=3: use block_length 5 or 2, or k 9 or 12"
    )


def test_k_beyond_the_data_max_frames_is_a_config_error():
    module = teacher_module(sampler=FirstSampler(MAX_FRAMES + 4))
    with pytest.raises(ConfigError, match=f"k={MAX_FRAMES + 4} .* max_frames={MAX_FRAMES}"):
        trainer().fit(module, datamodule=TinyVideos())


def test_loss_needing_a_teacher_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="rep, pred compare with the teacher"):
        StudentModule(hrnn(), NUM_CLASSES, None, sampler=UniformSampler(8))


def test_intermediate_loss_needs_an_all_frames_teacher():
    with pytest.raises(ConfigError, match="AllFramesSampler"):
        DistillModule(hrnn(), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                      teacher_sampler=UniformSampler(8), loss={"rep_i": IntermediateRepresentationLoss()})


def teacher_encoder_grads(module: DistillModule, batch: VideoBatch, loss_name: str) -> dict[str, torch.Tensor]:
    module.zero_grad()
    module.losses(module.model_step(batch), batch.labels)[loss_name].backward()
    return {n: p.grad.clone() for n, p in module.teacher_encoder.named_parameters()}


def test_parallel_teacher_gets_no_gradient_from_the_student_losses():
    torch.manual_seed(0)
    module = DistillModule(
        hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
        loss={"rep": RepresentationLoss(), "rep_i": IntermediateRepresentationLoss(), "pred": PredictionLoss(),
              "ce": ClassificationLoss()},
    )
    batch = TinyVideos().batches(module.frame_views("fit"))[0]
    with_student = teacher_encoder_grads(module, batch, "loss")
    head_with_student = module.head.linear.weight.grad.clone()
    teacher_only = teacher_encoder_grads(module, batch, "teacher/loss")
    head_teacher_only = module.head.linear.weight.grad.clone()
    assert same(with_student, teacher_only)
    assert any(g.abs().sum() > 0 for g in teacher_only.values())
    # The one shared head does learn from the student's L_CE and L_pred.
    assert not torch.equal(head_with_student, head_teacher_only)


def student_encoder_grad_norm(module: DistillModule) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("student_head", ["teacher_trained", "own"])
def test_parallel_teacher_learns_as_alone_unless_the_head_is_shared(student_head):
    torch.manual_seed(0)
    module = DistillModule(
        hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_head=student_head,
        loss={"rep": RepresentationLoss(), "pred": PredictionLoss(), "ce": ClassificationLoss()},
    )
    teacher_head = module.head if student_head == "teacher_trained" else module.teacher_head
    assert (teacher_head is module.head) == (student_head == "teacher_trained")
    batch = TinyVideos().batches(module.frame_views("fit"))[0]
    with_student = teacher_encoder_grads(module, batch, "loss")
    teacher_head_with_student = teacher_head.linear.weight.grad.clone()
    assert student_encoder_grad_norm(module) > 0  # the student's terms still train its encoder, through the head
    teacher_only = teacher_encoder_grads(module, batch, "teacher/loss")
    # Neither the teacher's encoder nor its head learns from the student's terms.
    assert same(with_student, teacher_only)
    assert torch.equal(teacher_head_with_student, teacher_head.linear.weight.grad)
    if student_head == "own":  # ... and the teacher's L_CE does not reach the student's head
        assert module.head.linear.weight.grad is None or not module.head.linear.weight.grad.any()


def test_parallel_student_head_options():
    # Only "own" adds a head: a shared one stays one copy under its usual name, so checkpoints are unchanged.
    for student_head, extra in (("shared", False), ("teacher_trained", False), ("own", True)):
        module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                               student_head=student_head)
        assert any(name.startswith("teacher_head.") for name in module.state_dict()) == extra
    with pytest.raises(ConfigError, match="student_head='mine' is not one of shared, teacher_trained, own"):
        DistillModule(hrnn(), NUM_CLASSES, sampler=UniformSampler(4), student_head="mine")


def test_parallel_logs_both_models():
    torch.manual_seed(0)
    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4))
    t = trainer(max_steps=3, limit_val_batches=None, max_epochs=1)
    t.fit(module, datamodule=TinyVideos())
    logged = set(t.callback_metrics)
    assert {"train/loss", "train/teacher/loss", "train/student/loss", "train/student/loss/rep",
            "train/student/loss/pred", "train/student/loss/ce"} <= logged
    assert {"val/teacher/gap", "val/student/gap", "val/teacher/perr", "val/student/map"} <= logged


def test_parallel_warm_up_grows_the_teacher_comparing_terms_from_zero():
    torch.manual_seed(0)
    scales = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            scales.append(module._teacher_terms_scale())

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), warmup_epochs=2)
    t = trainer(max_steps=6, callbacks=[Record()])  # 3 batches an epoch
    t.fit(module, datamodule=TinyVideos())
    assert scales == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert t.callback_metrics["train/student/loss/ce"] > 0
    with pytest.raises(ConfigError, match="warmup_epochs=-1"):
        DistillModule(hrnn(), NUM_CLASSES, sampler=UniformSampler(4), warmup_epochs=-1)


def test_a_parallel_student_that_starts_later_leaves_the_teacher_alone_until_then():
    torch.manual_seed(0)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((module._teacher_terms_scale(), [p.detach().clone() for p in module.encoder.parameters()]))

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), warmup_epochs=1,
                           student_start_epoch=1)
    start = [p.detach().clone() for p in module.teacher_encoder.parameters()]
    t = trainer(max_steps=6, callbacks=[Record()])  # 3 batches an epoch
    t.fit(module, datamodule=TinyVideos())
    scales, student = zip(*seen)
    # Epoch 0: the student's encoder does not move; the teacher's does. The warm-up counts from the student's start.
    def equal(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert all(equal(weights, student[0]) for weights in student[:4])
    assert not equal(student[3], student[5])
    assert not equal(start, [p.detach() for p in module.teacher_encoder.parameters()])
    assert scales == pytest.approx([0, 0, 0, 0, 1 / 3, 2 / 3])
    # Before it starts its loss is logged but not minimised: the total is the teacher's alone.
    batch = TinyVideos().batches(module.frame_views("fit"))[0]
    module.trainer.fit_loop.epoch_progress.current.completed = 0
    losses = module.losses(module.model_step(batch), batch.labels)
    assert losses["loss"] == losses["teacher/loss"] and losses["student/loss"] > 0
    with pytest.raises(ConfigError, match="student_start_epoch=-1"):
        DistillModule(hrnn(), NUM_CLASSES, sampler=UniformSampler(4), student_start_epoch=-1)


def test_a_parallel_student_that_starts_later_starts_at_the_initial_learning_rate():
    torch.manual_seed(0)
    rates = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            rates.append([group["lr"] for group in module.optimizers().optimizer.param_groups])

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_start_epoch=1,
                           optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
                           lr_scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.5))
    trainer(max_steps=9, callbacks=[Record()]).fit(module, datamodule=TinyVideos())  # 3 batches an epoch
    # The teacher's group (and the head) decays from the first epoch; the student's from its own first epoch.
    assert rates[::3] == [pytest.approx(epoch) for epoch in ([0.01, 0.01], [0.005, 0.01], [0.0025, 0.005])]
    student = set(map(id, module.encoder.parameters()))
    groups = module.optimizers().optimizer.param_groups
    assert {id(p) for p in groups[1]["params"]} == student and not student & {id(p) for p in groups[0]["params"]}


def test_a_parallel_student_that_starts_later_with_its_own_head_starts_from_the_teachers():
    torch.manual_seed(0)
    heads = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            heads.append(tuple(head.linear.weight.detach().clone() for head in (module.head, module.teacher_head)))

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_head="own",
                           student_start_epoch=1)
    trainer(max_steps=6, callbacks=[Record()]).fit(module, datamodule=TinyVideos())  # 3 batches an epoch
    student, teacher = zip(*heads)
    assert all(torch.equal(weights, student[0]) for weights in student[:3])  # untrained before it joins
    assert torch.equal(student[3], teacher[3])  # a copy of the teacher's trained head when it joins ...
    assert not torch.equal(student[3], student[0]) and not torch.equal(student[5], teacher[5])  # ... then its own
    groups = module.optimizers().optimizer.param_groups
    own = {*map(id, module.encoder.parameters()), *map(id, module.head.parameters())}
    assert {id(p) for p in groups[1]["params"]} == own and not own & {id(p) for p in groups[0]["params"]}


def test_a_parallel_student_can_start_from_its_teachers_encoder_when_it_joins():
    torch.manual_seed(0)
    encoders = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):  # after the module's epoch-start hook
            encoders.append([{name: value.clone() for name, value in e.state_dict().items()}
                             for e in (module.encoder, module.teacher_encoder)])

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_start_epoch=1,
                           encoder_from_teacher=True)
    initial = {name: value.clone() for name, value in module.teacher_encoder.state_dict().items()}
    trainer(max_steps=6, callbacks=[Record()]).fit(module, datamodule=TinyVideos())  # 3 batches an epoch

    def equal(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    student, teacher = zip(*encoders)
    assert not equal(teacher[3], initial)  # the teacher trained for an epoch ...
    assert equal(student[3], teacher[3])  # ... and the student starts as it is when it joins ...
    assert not equal(student[5], teacher[5])  # ... then trains on its own frames
    assert all(equal(weights, student[0]) for weights in student[:3])


@pytest.mark.parametrize("join", [{}, {"student_start_patience": 2, "student_start_latest": 0}])
def test_a_student_that_joins_at_epoch_0_cannot_start_from_its_teachers_encoder(join):
    with pytest.raises(ConfigError, match="encoder_from_teacher copies the teacher's encoder when the student joins, "
                                          "but the student joins at epoch 0"):
        DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), encoder_from_teacher=True,
                      **join)


def test_a_parallel_student_can_join_when_its_teachers_validation_gap_stops_improving(tmp_path):
    torch.manual_seed(0)
    teacher_gaps = [0.3, 0.5, 0.5, 0.4, 0.6, 0.6]  # by epoch: no improvement at epochs 2 and 3
    seen = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append((module.join_epoch, [p.detach().clone() for p in module.encoder.parameters()]))

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_head="own",
                           student_start_patience=2)
    scripted_teacher_gaps(module, teacher_gaps)
    stopping = DelayedEarlyStopping("val/student/gap", after_student_joins=True, mode="max", patience=1)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    t = trainer(max_epochs=6, max_steps=-1, callbacks=[Record(), stopping, checkpoints], limit_val_batches=None,
                enable_checkpointing=True)
    t.fit(module, datamodule=TinyVideos())
    joins, student = zip(*seen)
    # Decided at the end of epoch 3, the second validation without improvement; the student trains from epoch 4.
    assert joins == (None, None, None, None, 4, 4)
    assert all(torch.equal(a, b) for weights in student[1:5] for a, b in zip(weights, student[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(student[5], student[4], strict=True))
    # All six epochs ran: the student's early stopping (patience 1) ignored its GAP before it joined, which stays
    # the same from epoch to epoch (nothing of the student trains) and would have stopped the fit after epoch 1.
    assert len(seen) == 6
    # A resumed fit keeps the decision, which the checkpoint holds.
    resumed = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_head="own",
                            student_start_patience=2)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["student_join"] == {"join_epoch": 4, "best": pytest.approx(0.5), "wait": 2}
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.join_epoch == 4 and resumed._teacher_plateau == {"best": pytest.approx(0.5), "wait": 2}


def scripted_teacher_gaps(module: DistillModule, gaps: list[float]) -> None:
    """Make the module's validation see ``gaps[epoch]`` as the teacher's GAP (the rest of its metrics as computed)."""
    teacher_metric = module.metrics["val"]["teacher"]
    computed = teacher_metric.compute
    teacher_metric.compute = lambda: {**computed(), "gap": torch.tensor(gaps[module.current_epoch])}


def test_a_student_waiting_for_a_teacher_that_keeps_improving_joins_at_student_start_latest():
    torch.manual_seed(0)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):  # after the module's epoch-start hook
            if batch_idx == 0:
                seen.append((module.join_epoch, [p.detach().clone() for p in module.encoder.parameters()]))

    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), student_head="own",
                           student_start_patience=2, student_start_latest=3)
    scripted_teacher_gaps(module, [0.3, 0.4, 0.5, 0.6, 0.7])  # better every epoch: no plateau
    trainer(max_epochs=5, max_steps=-1, callbacks=[Record()], limit_val_batches=None).fit(module, datamodule=TinyVideos())
    joins, student = zip(*seen)
    assert joins == (None, None, None, 3, 3)
    assert all(torch.equal(a, b) for weights in student[1:4] for a, b in zip(weights, student[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(student[4], student[3], strict=True))


def test_a_fit_whose_student_never_joins_warns_that_its_checkpoints_hold_an_untrained_student():
    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                           student_start_patience=2)
    scripted_teacher_gaps(module, [0.3, 0.4, 0.5])
    with pytest.warns(UserWarning, match="the student never trained: the fit ended after 3 epochs, before the "
                                         "teacher's validation GAP stalled .* set student_start_latest"):
        trainer(max_epochs=3, max_steps=-1, limit_val_batches=None).fit(module, datamodule=TinyVideos())
    joins_at_the_end = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                                     student_start_epoch=3)
    with pytest.warns(UserWarning, match="the student never trained: .* was to join at epoch 3"):
        trainer(max_epochs=3, max_steps=-1).fit(joins_at_the_end, datamodule=TinyVideos())


@pytest.mark.parametrize(("settings", "message"), [
    ({"student_start_latest": 4}, "student_start_latest bounds a join .* student_start_patience is not set"),
    ({"student_start_patience": 2, "student_start_epoch": 5, "student_start_latest": 4},
     "student_start_latest=4 is before student_start_epoch=5"),
])
def test_student_start_latest_needs_a_plateau_join_and_no_earlier_than_the_start(settings, message):
    with pytest.raises(ConfigError, match=message):
        DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4), **settings)


def test_a_student_that_joins_at_the_teachers_plateau_needs_validation():
    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                           student_start_patience=2)
    with pytest.raises(ConfigError, match="student_start_patience waits for the teacher's validation GAP"):
        trainer(max_epochs=1).fit(module, datamodule=TinyVideos())
    with pytest.raises(ConfigError, match="student_start_patience=0 must be >= 1"):
        DistillModule(hrnn(), NUM_CLASSES, sampler=UniformSampler(4), student_start_patience=0)


def test_a_parallel_student_can_compare_with_an_average_of_its_teacher_in_evaluation_mode():
    torch.manual_seed(0)

    def netvlad():
        return NetVLAD.tiny(input_dim=DIM, rgb_dim=24)  # batch norm: its training-mode outputs are the batch's

    teachers = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx:  # the teacher after each step (and its optimiser step) but the last
                teachers.append([p.detach().clone() for p in module._teacher_network().parameters()])

    decay = 0.5
    module = DistillModule(netvlad(), NUM_CLASSES, sampler=UniformSampler(4), teacher_average_decay=decay)
    assert not any(p.requires_grad for p in module.averaged_teacher.parameters())
    trainer(max_steps=3, callbacks=[Record()]).fit(module, datamodule=TinyVideos())  # 3 batches an epoch
    teachers.append([p.detach() for p in module._teacher_network().parameters()])
    # The first step copies the teacher; each later one moves the average (1 - decay) of the way to it.
    expected = teachers[0]
    for weights in teachers[1:]:
        expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights, strict=True)]
    averaged = list(module.averaged_teacher.module.parameters())
    assert all(torch.allclose(a, e) for a, e in zip(averaged, expected, strict=True))
    optimised = {id(p) for group in module.optimizers().optimizer.param_groups for p in group["params"]}
    assert not optimised & set(map(id, module.averaged_teacher.parameters()))

    # Decay 0: the student's L_rep and L_pred compare with the teacher as it stands, in evaluation mode.
    module = DistillModule(netvlad(), NUM_CLASSES, sampler=UniformSampler(4), teacher_average_decay=0.0)
    module.averaged_teacher.update_parameters(module._teacher_network())
    batch = TinyVideos().batches(module.frame_views("fit"))[0]
    with torch.no_grad():  # first: a training-mode forward moves the teacher's batch-norm statistics
        in_evaluation = module.eval().model_step(batch)
    assert "target" not in in_evaluation  # evaluation and validation see the teacher itself
    outputs = module.train().model_step(batch)
    target = outputs["target"]
    assert not torch.allclose(target.representation, outputs["teacher"].representation)
    assert torch.allclose(target.representation, in_evaluation["teacher"].representation)
    assert torch.allclose(target.probabilities, in_evaluation["teacher"].probabilities)
    assert not target.representation.requires_grad
    with pytest.raises(ConfigError, match="teacher_average_decay=1.0 must be in"):
        DistillModule(netvlad(), NUM_CLASSES, sampler=UniformSampler(4), teacher_average_decay=1.0)


class Diverging(LossTerm):
    """A term whose value is infinite, as a far too large weight or learning rate would make it."""

    def forward(self, student, teacher, labels):
        return student.probabilities.sum() * float("inf")


def test_diverged_term_is_named():
    module = DistillModule(hrnn(block_length=2), NUM_CLASSES, hrnn(), sampler=UniformSampler(4),
                           loss={"ce": ClassificationLoss(), "blowup": Diverging()})
    with pytest.raises(ConfigError, match=r"loss term 'blowup' \(train/student/loss/blowup\) became inf at step 0: "
                                          "lower its weight or the learning rate"):
        trainer().fit(module, datamodule=TinyVideos())


def with_nan_features(video: int) -> TinyVideos:
    data = TinyVideos()
    data.frames[video, 1, 3] = float("nan")
    return data


def test_non_finite_features_are_bad_data_not_a_loss_weight():
    with pytest.raises(DataError, match=r"videos 'vid005' in the batch of step 0 have NaN or infinite features: the "
                                        "data is damaged, not the model"):
        trainer().fit(teacher_module(), datamodule=with_nan_features(5))


@pytest.mark.parametrize("stage", ["test", "predict"])
def test_evaluation_refuses_non_finite_features_and_weights(stage):
    module = teacher_module()
    with pytest.raises(DataError, match=r"videos 'vid010' in this batch have NaN or infinite features"):
        getattr(trainer(), stage)(module, datamodule=with_nan_features(10))
    with torch.no_grad():
        module.head.linear.weight.fill_(float("nan"))
    with pytest.raises(ConfigError, match=r"predicts NaN or infinite scores for videos 'vid000', .* and 3 more, whose "
                                          "features are finite"):
        getattr(trainer(), stage)(module, datamodule=TinyVideos())


def cli_model(class_name: str, init_args: dict) -> VideoClassifierModule:
    """The module LightningCLI builds from YAML, as ``vdistill`` does (subclass mode on the base class)."""
    cli = LightningCLI(
        VideoClassifierModule,
        subclass_mode_model=True,
        run=False,
        save_config_callback=None,
        args={
            "model": {"class_path": f"lightning_distill.training.{class_name}", "init_args": init_args},
            "trainer": {"logger": False, "enable_checkpointing": False},
            "seed_everything": 0,  # explicit: LightningCLI warns when it has to choose one
        },
    )
    return cli.model


def test_yaml_config_builds_the_modules_and_their_checkpoints_rebuild_alone(tmp_path):
    """The constructor type hints are the YAML schema; a CLI-built module's checkpoint needs no config."""
    data = TinyVideos()
    encoder = {"class_path": "lightning_distill.models.HRNN", "init_args": {"input_dim": DIM, "hidden_size": 16}}
    teacher = cli_model("TeacherModule", {"encoder": encoder, "num_classes": NUM_CLASSES})
    t = trainer(max_steps=1)
    t.fit(teacher, datamodule=data)
    teacher_path = tmp_path / "teacher.ckpt"
    t.save_checkpoint(teacher_path)

    student = cli_model(
        "StudentModule",
        {
            "encoder": {**encoder, "init_args": {**encoder["init_args"], "block_length": 2}},
            "teacher_checkpoint": str(teacher_path),
            "num_classes": NUM_CLASSES,
            "sampler": {"class_path": "lightning_distill.data.samplers.UniformSampler", "init_args": {"k": 4}},
            "loss": {
                "ce": "ClassificationLoss",
                "pred": {"class_path": "PredictionLoss", "init_args": {"weight": 0.01, "distance": "squared"}},
            },
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.95}},
        },
    )
    assert student.criterion.terms["pred"].weight == 0.01 and student.criterion.terms["pred"].distance == "squared"
    assert isinstance(student.sampler, UniformSampler) and student.sampler.k == 4
    assert isinstance(student.teacher_sampler, AllFramesSampler)
    assert student.configure_optimizers()["lr_scheduler"]["scheduler"].gamma == 0.95

    t = trainer(max_steps=1)
    t.fit(student, datamodule=data)
    path = tmp_path / "student.ckpt"
    t.save_checkpoint(path)
    # Plain-data hyper-parameters: the checkpoint loads with torch's safe (weights_only) unpickler.
    restored = StudentModule.load_from_checkpoint(path, weights_only=True)
    assert restored.criterion.terms["pred"].weight == 0.01
    assert same(state(restored), {k: v for k, v in state(student).items() if not k.startswith("teacher.")})


def test_yaml_head_callable_builds_the_configured_head():
    module = cli_model(
        "TeacherModule",
        {
            "encoder": {
                "class_path": "lightning_distill.models.NetVLAD",
                "init_args": {"input_dim": DIM, "rgb_dim": 24, "num_clusters": 4, "hidden_size": 32},
            },
            "num_classes": NUM_CLASSES,
            "head": {"class_path": "lightning_distill.models.heads.MoEHead", "init_args": {"num_mixtures": 3}},
        },
    )
    assert isinstance(module.head, MoEHead) and module.head.num_mixtures == 3
    assert (module.head.input_dim, module.head.num_classes) == (32, NUM_CLASSES)
