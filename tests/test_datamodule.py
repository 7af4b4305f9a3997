"""YT8MDataModule against the records the stores were written from: frames, labels, views, splits, ranks."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DistributedSampler
from yt8m_writer import frame_level_example, random_video, write_tfrecord

from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.normalization import FrameL2Normalization, NoNormalization
from lightning_distill.data.video_record import VideoRecord
from lightning_distill.data.samplers import AllFramesSampler, RandomSampler, UniformSampler
from lightning_distill.errors import ConfigError, DataError
from store_writer import write_frame_store

NUM_CLASSES = 6
MAX_FRAMES = 24  # below the longest stored video, so the data module's cap is exercised
LENGTHS = [1, 3, 30, 7, 24, 25, 12, 2, 19, 5, 40, 9, 16, 4, 11, 8, 21, 13, 6, 10]
BOTH_VIEWS = {"teacher": AllFramesSampler(), "student": UniformSampler(4)}


def _records(seed: int, lengths: list[int], labelled: bool = True) -> list[VideoRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i, length in enumerate(lengths):
        rgb, audio = random_video(rng, length)
        labels = rng.choice(NUM_CLASSES, size=i % 3, replace=False) if labelled else np.empty(0, np.int64)
        records.append(VideoRecord(f"vid{i:02d}", labels.astype(np.int64), rgb, audio))
    return records


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 20-video frame-level store and the records it was written from, keyed by id."""
    path = tmp_path_factory.mktemp("store") / "train.h5"
    records = _records(0, LENGTHS)
    write_frame_store(path, records, level="frame", source_version="2018", num_classes=NUM_CLASSES)
    return path, {r.video_id: r for r in records}


def _module(path, **kwargs) -> YT8MDataModule:
    defaults = dict(train_files=str(path), batch_size=8, num_workers=0, reader_threads=0, max_frames=MAX_FRAMES, views=BOTH_VIEWS)
    return YT8MDataModule(**{**defaults, **kwargs})


def _batches(loader, dm=None) -> list:
    return [dm.on_after_batch_transfer(b, 0) if dm else b for b in loader]


def _dequantised(record: VideoRecord) -> np.ndarray:
    """Independent truth: the starter code's dequantisation of the first MAX_FRAMES frames, rgb then audio."""
    q = np.concatenate([record.rgb, record.audio], axis=1)[:MAX_FRAMES]
    return q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)


def test_batch_shapes_and_dtypes(source):
    dm = _module(source[0], val_fraction=0.0)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 8 and batch.labels.shape == (8, NUM_CLASSES) and batch.labels.dtype == torch.float32
    teacher, student = batch.views["teacher"], batch.views["student"]
    assert teacher.frames.dtype == torch.uint8 and teacher.frames.shape == (8, int(batch.lengths.max()), 1152)
    assert student.frames.shape == (8, 4, 1152) and student.mask.all()
    assert teacher.mask.dtype == torch.bool and teacher.positions.dtype == torch.long
    assert torch.equal(teacher.mask, teacher.positions >= 0)
    assert torch.equal(teacher.mask.sum(1), batch.lengths)


def test_teacher_view_is_the_stored_frames_bit_for_bit(source):
    path, records = source
    dm = _module(path, val_fraction=0.0, normalization=NoNormalization())
    seen = set()
    for batch in _batches(dm.train_dataloader(), dm):
        view = batch.views["teacher"]
        assert view.frames.dtype == torch.float32
        for b, video_id in enumerate(batch.video_ids):
            expected = _dequantised(records[video_id])
            length = len(expected)
            assert batch.lengths[b] == length == min(records[video_id].num_frames, MAX_FRAMES)
            assert np.array_equal(view.frames[b, :length].numpy(), expected)
            assert not view.frames[b, length:].any()  # padding exactly zero
            seen.add(video_id)
    assert seen == set(records)


def test_normalised_teacher_view_has_unit_frames(source):
    path, records = source
    dm = _module(path, val_fraction=0.0, normalization=FrameL2Normalization())
    batch = _batches(dm.train_dataloader(), dm)[0]
    view = batch.views["teacher"]
    for b, video_id in enumerate(batch.video_ids):
        expected = _dequantised(records[video_id])
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.allclose(view.frames[b, : len(expected)].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(view.frames[~view.mask], torch.zeros_like(view.frames[~view.mask]))


def test_student_view_is_the_teacher_frames_at_its_positions(source):
    dm = _module(source[0], val_fraction=0.0)
    for batch in _batches(dm.train_dataloader(), dm):
        teacher, student = batch.views["teacher"], batch.views["student"]
        assert torch.equal(student.positions, UniformSampler(4).indices(batch.lengths))
        rows = torch.arange(len(batch))[:, None]
        assert torch.equal(student.frames, teacher.frames[rows, student.positions])


def test_student_alone_reads_the_same_frames(source):
    """Without a teacher view the student's k frames are read from the store directly, not gathered."""
    both = _module(source[0], val_fraction=0.0)
    alone = _module(source[0], val_fraction=0.0, views={"student": UniformSampler(4)})
    for a, b in zip(both.train_dataloader(), alone.train_dataloader()):
        assert a.video_ids == b.video_ids
        assert torch.equal(a.views["student"].frames, b.views["student"].frames)


def test_labels_are_multi_hot(source):
    path, records = source
    dm = _module(path, val_fraction=0.0)
    for batch in dm.train_dataloader():
        for b, video_id in enumerate(batch.video_ids):
            assert set(torch.nonzero(batch.labels[b]).flatten().tolist()) == set(records[video_id].labels.tolist())


def test_validation_carve_out_is_deterministic_and_disjoint(source):
    def split_ids(seed):
        dm = _module(source[0], val_fraction=0.25, seed=seed)
        dm.setup("fit")
        ids = lambda loader: [v for b in loader for v in b.video_ids]  # noqa: E731
        return ids(dm.train_dataloader()), ids(dm.val_dataloader())

    train, val = split_ids(0)
    assert len(val) == 5 and len(train) == 15  # round(20 * 0.25)
    assert set(train).isdisjoint(val) and len(set(train) | set(val)) == 20
    assert set(split_ids(0)[1]) == set(val)
    assert set(split_ids(1)[1]) != set(val)


def test_training_order_changes_per_epoch_and_covers_every_video_once(source):
    loader = _module(source[0], val_fraction=0.0).train_dataloader()
    epochs = []
    for epoch in (0, 1):
        _set_sampler_epoch(loader, epoch)
        epochs.append([v for b in loader for v in b.video_ids])
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 20
    assert epochs[0] != epochs[1]


def test_random_views_are_fixed_at_evaluation_and_fresh_each_training_epoch(source):
    dm = _module(source[0], val_fraction=0.5, views={"student": RandomSampler(3)})
    dm.setup("fit")
    positions = lambda loader: torch.cat([b.views["student"].positions for b in loader])  # noqa: E731
    assert torch.equal(positions(dm.val_dataloader()), positions(dm.val_dataloader()))

    def draws(loader, epoch):
        _set_sampler_epoch(loader, epoch)
        return {v: p.tolist() for b in loader for v, p in zip(b.video_ids, b.views["student"].positions)}

    train = dm.train_dataloader()
    assert draws(train, 0) == draws(train, 0)  # reproducible within an epoch
    first, second = draws(train, 0), draws(train, 1)
    # Videos of more than 3 frames have C(n, 3) >= 4 draws; most must change from one epoch to the next.
    longer = [v for v in first if len(set(first[v])) == 3]
    assert sum(first[v] != second[v] for v in longer) >= len(longer) // 2


@pytest.mark.parametrize("reader", [{"num_workers": 2, "reader_threads": 0}, {"reader_threads": 2}], ids=["workers", "threads"])
def test_batches_do_not_depend_on_how_they_are_read(source, reader):
    views = {"teacher": AllFramesSampler(), "student": RandomSampler(3)}
    in_process = _module(source[0], val_fraction=0.0, views=views).train_dataloader()
    elsewhere = _module(source[0], val_fraction=0.0, views=views, **reader).train_dataloader()
    for loader in (in_process, elsewhere):
        _set_sampler_epoch(loader, 3)
    a, b = list(in_process), list(elsewhere)
    assert [x.video_ids for x in a] == [x.video_ids for x in b]
    for x, y in zip(a, b):
        assert all(torch.equal(x.views[n].frames, y.views[n].frames) for n in views)
        assert torch.equal(x.views["student"].positions, y.views["student"].positions)


def test_predict_split_without_labels(tmp_path):
    path = tmp_path / "unlabelled.h5"
    records = _records(1, [5, 9, 2], labelled=False)
    write_frame_store(path, records, level="frame", source_version="2018", num_classes=NUM_CLASSES)
    dm = YT8MDataModule(predict_files=str(path), num_workers=0, reader_threads=0, views={"student": UniformSampler(2)})
    (batch,) = _batches(dm.predict_dataloader(), dm)
    assert batch.video_ids == ["vid00", "vid01", "vid02"]
    assert not batch.labels.any() and batch.labels.shape == (3, NUM_CLASSES)
    assert dm.num_classes == NUM_CLASSES


def test_video_level_store_is_not_dequantised(tmp_path):
    path = tmp_path / "video.h5"
    rng = np.random.default_rng(2)
    means = rng.normal(size=(3, 1152)).astype(np.float32)
    records = [VideoRecord(f"v{i}", np.array([i]), m[None, :1024], m[None, 1024:]) for i, m in enumerate(means)]
    write_frame_store(path, records, level="video", source_version="2018", num_classes=NUM_CLASSES)
    views = {"teacher": AllFramesSampler()}
    dm = YT8MDataModule(test_files=str(path), num_workers=0, reader_threads=0, normalization=NoNormalization(), views=views)
    (batch,) = _batches(dm.test_dataloader(), dm)
    assert torch.equal(batch.views["teacher"].frames[:, 0], torch.from_numpy(means))


def test_num_classes_mismatch_names_both_numbers(source):
    dm = _module(source[0], num_classes=NUM_CLASSES + 1)
    with pytest.raises(ConfigError, match=rf"{NUM_CLASSES} classes but num_classes is {NUM_CLASSES + 1}"):
        dm.setup("fit")


def test_prepare_data_converts_tfrecords_and_detects_classes(tmp_path):
    rng = np.random.default_rng(3)
    videos = [(f"tf{i}", [i % 4], *random_video(rng, n)) for i, n in enumerate([3, 8, 5, 1, 6])]
    for shard, part in enumerate((videos[:3], videos[3:])):
        write_tfrecord(tmp_path / f"train{shard}.tfrecord", [frame_level_example(*v) for v in part])
    dm = YT8MDataModule(
        train_files=str(tmp_path / "train*.tfrecord"),
        store_dir=str(tmp_path / "stores"),
        num_workers=0,
        val_fraction=0.0,
        normalization=NoNormalization(),
        views={"teacher": AllFramesSampler()},
    )
    assert dm.num_classes == 3862  # 2018 records, detected from the first record before any conversion
    dm.prepare_data()
    assert (tmp_path / "stores" / "train.h5").is_file()
    (batch,) = _batches(dm.train_dataloader(), dm)
    for b, (video_id, labels, rgb, audio) in enumerate(sorted(videos)):
        record = VideoRecord(video_id, np.array(labels), rgb, audio)
        assert batch.video_ids[b] == video_id and batch.labels[b].nonzero().flatten().tolist() == labels
        assert np.array_equal(batch.views["teacher"].frames[b, : len(rgb)].numpy(), _dequantised(record))


@pytest.mark.parametrize("train_files", ["/nonexistent/train*.tfrecord", "/nonexistent/a.tfrecord,/nope/*.tfr"])
def test_globs_matching_nothing_are_data_errors(tmp_path, train_files):
    dm = YT8MDataModule(train_files=train_files, store_dir=str(tmp_path), views=BOTH_VIEWS)
    with pytest.raises(DataError, match="data.train_files: .*matches no file"):
        dm.prepare_data()


def test_missing_store_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass an existing frame store"):
        YT8MDataModule(train_files=str(tmp_path / "absent.h5"), num_classes=4).setup("fit")


def test_views_come_from_the_lightning_module(source):
    asked, seen = [], []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def frame_views(self, stage):
            asked.append(stage)
            return {"student": UniformSampler(2)}

        def training_step(self, batch, batch_idx):
            seen.append((set(batch.views), batch.views["student"].frames.dtype))
            return self.weight.sum()

        def validation_step(self, batch, batch_idx):
            seen.append((set(batch.views), batch.views["student"].frames.dtype))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), datamodule=_module(source[0], views=None, reader_threads=2))
    assert set(asked) == {"fit", "validate"}
    # sanity check (1 val batch) + 2 training batches + 1 val batch, all dequantised on the way in
    assert seen == [({"student"}, torch.float32)] * 4


def test_no_views_and_no_module_is_a_config_error(source):
    with pytest.raises(ConfigError, match="frame_views"):
        _module(source[0], views=None).train_dataloader()


@pytest.mark.parametrize(
    "setting", [{"batch_size": 0}, {"val_fraction": 1.0}, {"num_workers": -1}, {"num_workers": 2, "reader_threads": 2}]
)
def test_bad_settings_are_config_errors(source, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        _module(source[0], **setting)


def _ranked(dm: YT8MDataModule, rank: int, world: int = 2) -> YT8MDataModule:
    """``dm`` as rank ``rank`` of a ``world``-process run sees it (the attributes a trainer lends it)."""
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, lightning_module=None)
    return dm


@pytest.mark.parametrize("reader_threads", [0, 2])
@pytest.mark.parametrize("num_videos", [16, 20, 3])  # 2, 2.5 and 0.375 batches of 8 per rank
def test_ranks_share_the_batches_and_evaluate_every_video_once(tmp_path, num_videos, reader_threads):
    path = tmp_path / "ranks.h5"
    records = _records(4, LENGTHS[:num_videos])
    write_frame_store(path, records, level="frame", source_version="2018", num_classes=NUM_CLASSES)
    options = dict(val_fraction=0.0, views={"student": UniformSampler(2)}, reader_threads=reader_threads)
    single = _module(path, **options)
    every = [f"vid{i:02d}" for i in range(num_videos)]
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            loader = _ranked(_module(path, **options), rank).train_dataloader()
            # Lightning leaves a DistributedSampler in place: it would pad evaluation shares with repeats.
            assert isinstance(loader.sampler, DistributedSampler)
            _set_sampler_epoch(loader, epoch)
            per_rank.append([b.video_ids for b in loader])
        # Training: every rank takes the same number of steps; together they see every video.
        assert len(per_rank[0]) == len(per_rank[1]) == -(-num_videos // 16)
        assert {v for batches in per_rank for b in batches for v in b} == set(every)

    for split in ("test", "predict"):
        files = {f"{split}_files": str(path)}
        expected = [b.video_ids for b in getattr(_module(path, **options, **files), f"{split}_dataloader")()]
        shares = [[b.video_ids for b in getattr(_ranked(_module(path, **options, **files), rank), f"{split}_dataloader")()]
                  for rank in (0, 1)]
        # Evaluation: contiguous, unpadded shares of the single process's batches, in its order.
        assert shares[0] + shares[1] == expected
        assert sorted(v for share in shares for b in share for v in b) == every
    assert single.train_dataloader().sampler.num_replicas == 1


@pytest.mark.parametrize("reader_threads", [0, 2])
def test_a_loader_resumes_mid_epoch_where_it_stopped(source, reader_threads):
    def loader():
        dm = _module(source[0], val_fraction=0.0, batch_size=3, views={"s": RandomSampler(2)}, reader_threads=reader_threads)
        train = dm.train_dataloader()
        _set_sampler_epoch(train, 1)
        return train

    uninterrupted = [(b.video_ids, b.views["s"].positions) for b in loader()]
    interrupted = loader()
    consumed = []
    for batch in interrupted:
        consumed.append((batch.video_ids, batch.views["s"].positions))
        if len(consumed) == 4:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 4}

    resumed = loader()
    resumed.load_state_dict(state)
    rest = [(b.video_ids, b.views["s"].positions) for b in resumed]
    assert len(consumed) + len(rest) == len(uninterrupted)
    for (ids, positions), (expected_ids, expected_positions) in zip(consumed + rest, uninterrupted):
        assert ids == expected_ids and torch.equal(positions, expected_positions)
    assert resumed.state_dict() == {"epoch": 1, "batches": len(uninterrupted)}

    # A state saved at the end of epoch 1 must not cut epoch 2 short.
    next_epoch = loader()
    next_epoch.load_state_dict({"epoch": 1, "batches": len(uninterrupted)})
    _set_sampler_epoch(next_epoch, 2)
    assert len(list(next_epoch)) == len(uninterrupted)
