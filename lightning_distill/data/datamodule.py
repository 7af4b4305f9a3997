"""``YT8MDataModule``: YouTube-8M splits as frame stores, batches of the views the LightningModule asks for.

Each split is given as TFRecords (converted once, by ``prepare_data``, to ``<store_dir>/<split>.h5``) or as an
existing frame store. Loaders yield ``VideoBatch``es of uint8 frames; ``on_after_batch_transfer`` dequantises
and normalises them on the device. Which views a batch holds is the LightningModule's call (``ViewProvider``):
a teacher needs all frames, a student its k, distillation both, read from disk once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_distill.data.batch import FrameView, VideoBatch
from lightning_distill.data.column_store import open_column_store
from lightning_distill.data.convert import convert, resolve_inputs
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.loading import ThreadedDataLoader, VideoBatchDataset, VideoBatchSampler, every_frame_view
from lightning_distill.data.normalization import FeatureNormalizer, FrameL2Normalization, dequantize_frames
from lightning_distill.data.samplers import FrameSampler, ScoredSampler
from lightning_distill.data.target_cache import TEACHER_TARGETS, CacheKind, TargetCache, build_target_cache, cache_key
from lightning_distill.data.yt8m import MAX_FRAMES
from lightning_distill.data.tfrecord_reader import detect_format
from lightning_distill.errors import ConfigError, DataError

SPLITS = ("train", "val", "test", "predict")
# The splits each Lightning stage reads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
STORE_SUFFIXES = (".h5", ".hdf5")
NO_DATA_HINT = (
    "no data yet? `vdistill synth --output data/synthetic` writes a synthetic set the tiny configs read, "
    "data_prep/README.md downloads YouTube-8M"
)


@runtime_checkable
class ViewProvider(Protocol):
    """A LightningModule that says which frame views its batches must hold."""

    def frame_views(self, stage: str) -> dict[str, FrameSampler]:
        """View name -> sampler for the loader of ``stage`` ("fit", "validate", "test" or "predict")."""


class YT8MDataModule(L.LightningDataModule):
    """YouTube-8M (or synthetic) videos from HDF5 frame stores, batched with the views the model asks for.

    Args:
        train_files: training videos: a glob of TFRecord shards ('DIR/train*.tfrecord', several separated by
            commas) or the path of an existing frame store (.h5).
        val_files: validation videos, as ``train_files``; default: a ``val_fraction`` carved out of train.
        test_files: test videos, as ``train_files``.
        predict_files: videos to predict (labels may be absent), as ``train_files``.
        store_dir: where TFRecord splits are converted to: ``<store_dir>/<split>.h5`` (split in train, val,
            test, predict).
        num_classes: label vocabulary size; default: the store's, or detected from the first TFRecord
            (3862 for 2018+ records, 4716 for 2017).
        batch_size: videos per batch.
        num_workers: DataLoader worker processes (needs ``reader_threads: 0``); 0 reads in the training process.
        reader_threads: threads of the training process that read batches ahead (the default), instead of
            worker processes. Batches are read whole from a memory map, so a thread releases the GIL while it
            copies, and a teacher batch (about 48 MB) costs more to pass between processes than to read: 6x
            faster than 2 workers in ``benchmarks/loader.py``.
        max_frames: frames per video at most; the teacher view holds the batch's longest video up to this.
        normalization: applied on the device to dequantised frames; default: ``FrameL2Normalization`` (the
            YouTube-8M starter code's).
        val_fraction: share of the training videos held out for validation when ``val_files`` is not given
            (0 disables validation); the split is fixed by ``seed``.
        seed: seeds the training order and random frame draws (both change every epoch), the validation
            carve-out and the evaluation-time random draws (fixed).
        verify_crc: check every record's CRC32C while converting TFRecords.
        convert_workers: processes converting shards in parallel.
        views: view name -> sampler for every stage; default: ask the LightningModule (``frame_views``).
        skims_apart: keep the features a frame-scoring sampler (``SkimSampler``) reads of every frame in a file
            beside the store, built once (``data/column_store.py``; its size: the skimmed share of the store's), so
            that scoring reads only them from disk. False reads them from the store's rows, which hold all 1152
            features of a frame side by side: every frame's bytes are read.
    """

    def __init__(
        self,
        train_files: str | None = None,
        val_files: str | None = None,
        test_files: str | None = None,
        predict_files: str | None = None,
        store_dir: str = "data/stores",
        num_classes: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        reader_threads: int = 2,
        max_frames: int = MAX_FRAMES,
        normalization: FeatureNormalizer | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        verify_crc: bool = True,
        convert_workers: int = 1,
        views: dict[str, FrameSampler] | None = None,
        skims_apart: bool = True,
    ) -> None:
        super().__init__()
        # With more ranks than evaluation batches some ranks evaluate nothing; their metrics still sync.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        _check_settings(batch_size, num_workers, reader_threads, max_frames, val_fraction, num_classes)
        self.sources = {"train": train_files, "val": val_files, "test": test_files, "predict": predict_files}
        self.store_dir = Path(store_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.reader_threads = reader_threads
        self.max_frames = max_frames
        self.normalization = normalization or FrameL2Normalization()
        self.val_fraction = val_fraction
        self.seed = seed
        self.verify_crc = verify_crc
        self.convert_workers = convert_workers
        self.views = views
        self.skims_apart = skims_apart
        self._num_classes = num_classes  # resolved lazily by the num_classes property
        self._configured_classes = num_classes  # what conversion is told: None lets it detect the source version
        self._stores: dict[str, FrameStore] = {}
        self._videos: dict[str, np.ndarray] = {}
        self._targets: list[TargetCache] = []

    @property
    def num_classes(self) -> int:
        """The label vocabulary size, known right after construction (LightningCLI links it to the model).

        The configured value, else the first given split's: a store's attribute, or detected from the first
        record of its TFRecords (3862 for 2018+, 4716 for 2017) before any conversion.
        """
        if self._num_classes is None:
            self._num_classes = self._find_num_classes()
        return self._num_classes

    def store_path(self, split: str) -> Path:
        """The frame store a split is read from: the given .h5, or ``<store_dir>/<split>.h5``."""
        source = self.sources[split]
        if source is not None and _is_store(source):
            return Path(source)
        return self.store_dir / f"{split}.h5"

    def prepare_data(self) -> None:
        """Convert every split given as TFRecords to its store (skipped when up to date; lock-protected)."""
        for split, source in self.sources.items():
            if source is None or _is_store(source):
                continue
            self.store_dir.mkdir(parents=True, exist_ok=True)
            convert(
                _shards(split, source),
                self.store_path(split),
                workers=self.convert_workers,
                verify_crc=self.verify_crc,
                max_frames=self.max_frames,
                num_classes=self._configured_classes,
            )

    def setup(self, stage: str | None = None) -> None:
        """Open the stores ``stage`` reads (all given splits when None) and carve validation out of train."""
        splits = STAGE_SPLITS[stage] if stage else SPLITS
        if stage == "fit" and self.sources["train"] is None:
            raise ConfigError("fit needs training data: set data.train_files to TFRecords or a frame store")
        carve = "val" in splits and self.sources["val"] is None and self.sources["train"] is not None
        # Carving validation out of train needs the train store, even when only validating.
        for split in {*splits, "train"} if carve else splits:
            if self.sources[split] is not None:
                self._open(split)
        if carve:
            self._carve_validation()

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", "fit", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # No validation data (no val_files and val_fraction = 0): Lightning skips validation on an empty list.
        return self._loader("val", "validate", shuffle=False) if "val" in self._videos else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", "predict", shuffle=False)

    def on_after_batch_transfer(self, batch: VideoBatch, dataloader_idx: int) -> VideoBatch:
        """On the device: uint8 -> float32 ``q * 4/255 + 4/512 - 2``, exact zeros at padding, then normalise."""
        return _model_inputs(batch, self.normalization)

    def teacher_targets(
        self,
        teacher: Callable[[VideoBatch], dict[str, Tensor]],
        *,
        checkpoint: str,
        sampler: FrameSampler,
        device: torch.device,
        precision: str = "32-true",
        context: Callable[[], AbstractContextManager] = nullcontext,
        normalization: FeatureNormalizer | None = None,
        split: str = "train",
        kind: CacheKind = TEACHER_TARGETS,
    ) -> tuple[TargetCache, bool]:
        """A frozen model's outputs for every video of a split, computed once: its cache beside the split's store
        (``data/target_cache.py``), built first if this model, store and view have none: one pass over the store,
        in store order, on ``device``. ``use_teacher_targets`` attaches teacher-target caches to the training batches.

        Args:
            teacher: a batch whose "teacher" view is dequantised and normalised, on ``device`` -> a (B, ...) row per
                video of each of ``kind``'s fields (a teacher: ``{"representation": (B, E), "probabilities":
                (B, C)}``).
            checkpoint: the model's checkpoint file (its bytes are part of the cache's key).
            sampler: the model's frames.
            device: where the model runs.
            precision: the trainer's precision setting (part of the cache's key).
            context: entered around each model call: the precision's autocast context, so the targets are what
                the model computes while training.
            normalization: the inputs the model was trained on; default: this data module's ``normalization``.
            split: whose store: ``train`` (teacher targets) or ``val``.
            kind: what the cache holds.

        Returns:
            The cache, and whether this call built it.
        """
        if split not in self._stores:
            self.setup("fit")
        if split not in self._stores:
            raise ConfigError(f"no {split} data to compute targets for: set data.{split}_files")
        normalization = normalization or self.normalization
        store = self._stores[split]
        view = {"sampler": repr(sampler), "normalization": repr(normalization), "max_frames": self.max_frames,
                "precision": precision}
        key = cache_key(checkpoint, store, view)

        def batches() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
            loader = self._make_loader(store, np.arange(len(store)), {"teacher": sampler}, shuffle=False, ranks={})
            for batch in loader:
                batch = _model_inputs(move_data_to_device(batch, device), normalization)
                with torch.no_grad(), context():
                    outputs = teacher(batch)
                yield batch.indices.numpy(), {name: value.float().cpu().numpy() for name, value in outputs.items()}

        # The store's own path: a validation split carved out of train shares the train store (and its cache).
        return build_target_cache(store.path, key, batches, teacher=str(checkpoint), kind=kind)

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has videos to load, once set up (validation may be carved out of train, or absent)."""
        return split in self._videos

    def read_view(self, split: str, videos: Tensor, positions: Tensor) -> FrameView:
        """Frames of a split's videos read on demand, as the model sees them (on ``positions``' device): what a
        per-video frame selection (``EarlyExitModule``) reads after the batch it decided on.

        Args:
            split: ``train``, ``val``, ``test`` or ``predict``, whose store ``videos`` index.
            videos: (B,) long store indices (``VideoBatch.indices``).
            positions: (B, T) long frame indices in each video, -1 for slots to leave empty (not read).
        """
        if split not in self._stores:
            raise ConfigError(f"no {split} store is open to read from: set data.{split}_files")
        raw = self._stores[split].read_frames(videos.cpu().numpy(), positions.cpu().numpy())
        view = FrameView(frames=torch.from_numpy(raw).to(positions.device), mask=positions >= 0, positions=positions)
        return _view_inputs(view, self.normalization)

    def use_teacher_targets(self, caches: list[TargetCache]) -> None:
        """Attach these caches' rows to every training batch from now on (``VideoBatch.targets``, in this order)."""
        self._targets = list(caches)

    def first_batch(self, views: dict[str, FrameSampler]) -> VideoBatch:
        """The first batch (uint8, as loaded) of the first split given, in test, val, train, predict order: a real
        batch for checks such as an export's."""
        split = next((s for s in ("test", "val", "train", "predict") if self.sources[s] is not None), None)
        if split is None:
            raise ConfigError("no data to check with: set data.test_files (or any data.*_files)")
        self.prepare_data()
        store_path = self.store_path(split)
        store = self._stores.get(split) or FrameStore(store_path)
        return next(iter(self._make_loader(store, np.arange(len(store)), views, shuffle=False, ranks={})))

    def _loader(self, split: str, stage: str, shuffle: bool) -> DataLoader:
        if split not in self._videos:
            self.setup(stage)
        if split not in self._videos:
            raise ConfigError(f"no {split} data: set data.{split}_files to TFRecords or a frame store")
        # The sampler shares batches between ranks itself (see data/loading.py); a rank may get none to evaluate.
        ranks = {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank} if self.trainer else {}
        targets = self._targets if split == "train" and stage == "fit" else []
        return self._make_loader(self._stores[split], self._videos[split], self._views(stage), shuffle, ranks, targets)

    def _make_loader(
        self,
        store: FrameStore,
        videos: np.ndarray,
        views: dict[str, FrameSampler],
        shuffle: bool,
        ranks: dict[str, int],
        targets: Sequence[TargetCache] = (),
    ) -> ThreadedDataLoader:
        self._keep_skims_apart(store, views)
        return ThreadedDataLoader(
            VideoBatchDataset(store, videos, views, self.max_frames, targets),
            reader_threads=self.reader_threads,
            # Batches come whole from the sampler: batch_size=None turns off per-sample collation.
            sampler=VideoBatchSampler(len(videos), self.batch_size, shuffle=shuffle, seed=self.seed, **ranks),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _keep_skims_apart(self, store: FrameStore, views: dict[str, FrameSampler]) -> None:
        """Have ``store`` read the features its views' scoring samplers skim from a column store (see
        ``skims_apart``), unless a view reads every frame whole anyway (the loader then skims those)."""
        if not self.skims_apart or every_frame_view(views) is not None:
            return
        for sampler in views.values():
            # Checked first: the train and val loaders of one store would otherwise each lock, hash and open it.
            if isinstance(sampler, ScoredSampler) and not store.keeps_apart(sampler.columns):
                columns, built = open_column_store(store, sampler.columns)
                store.keep_apart(columns)
                action = f"built in {columns.build_seconds:.1f} s" if built else "reused"
                rank_zero_info(f"skimmed features: {columns.width} per frame read from {columns.path} ({action})")

    def _views(self, stage: str) -> dict[str, FrameSampler]:
        if self.views is not None:
            return self.views
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not isinstance(module, ViewProvider):
            raise ConfigError(
                "the data module does not know which frame views to load: pass data.views, or train a "
                "LightningModule that implements frame_views(stage)"
            )
        return module.frame_views(stage)

    def _open(self, split: str) -> None:
        path = self.store_path(split)
        if not path.is_file():
            hint = "pass an existing frame store" if _is_store(self.sources[split]) else "run prepare_data() first"
            raise DataError(f"{path}: the {split} frame store does not exist; {hint}")
        store = FrameStore(path)
        if store.num_classes != self.num_classes:
            raise ConfigError(
                f"{path} has {store.num_classes} classes but num_classes is {self.num_classes}: "
                "set data.num_classes to match the data, or convert the split again"
            )
        self._stores[split] = store
        self._videos[split] = np.arange(len(store))

    def _carve_validation(self) -> None:
        """Hold out ``val_fraction`` of train (at least one video), the same videos for the same seed."""
        store = self._stores["train"]
        if self.val_fraction == 0 or len(store) < 2:
            self._videos.pop("val", None)
            return
        order = np.random.default_rng(self.seed).permutation(len(store))
        cut = min(max(round(len(store) * self.val_fraction), 1), len(store) - 1)
        self._stores["val"] = store
        self._videos["val"] = np.sort(order[:cut])
        self._videos["train"] = np.sort(order[cut:])

    def _find_num_classes(self) -> int:
        return find_num_classes(self.sources, self.store_dir, verify_crc=self.verify_crc)


def find_num_classes(sources: dict[str, str | None], store_dir: str | Path, *, verify_crc: bool = True) -> int:
    """The class count of the first given split: a store's attribute, or the format of its first TFRecord's first
    record (3862 for 2018+, 4716 for 2017).

    Args:
        sources: split -> TFRecord glob or store path, as the data module's ``*_files``.
        store_dir: where TFRecord splits are converted to.
        verify_crc: check the CRCs of the record read.

    Raises:
        ConfigError: no split is given. DataError: the first given split's files cannot be read.
    """
    for split, source in sources.items():
        if source is not None:
            if _is_store(source):
                return FrameStore(source).num_classes
            return detect_format(_shards(split, source)[0], verify_crc=verify_crc).num_classes
    raise ConfigError("num_classes is unknown without data: set data.num_classes or data.train_files")


def _model_inputs(batch: VideoBatch, normalization: FeatureNormalizer) -> VideoBatch:
    """``batch`` with every view's uint8 frames dequantised (exact zeros at padding) and normalised, in place."""
    for view in batch.views.values():
        _view_inputs(view, normalization)
    return batch


def _view_inputs(view: FrameView, normalization: FeatureNormalizer) -> FrameView:
    """``view`` with its uint8 frames dequantised (exact zeros at padding) and normalised, in place."""
    frames = view.frames
    if frames.dtype == torch.uint8:
        frames = dequantize_frames(frames).masked_fill_(~view.mask[..., None], 0.0)
    view.frames = normalization(frames, view.mask)
    return view


def _is_store(source: str) -> bool:
    return source.endswith(STORE_SUFFIXES)


def _shards(split: str, source: str) -> list[Path]:
    """The TFRecord files a comma-separated list of paths and globs names; DataError naming the split if any
    pattern matches nothing."""
    try:
        return resolve_inputs([p.strip() for p in source.split(",") if p.strip()])
    except DataError as error:
        raise DataError(f"data.{split}_files: {error}; {NO_DATA_HINT}") from None


def _check_settings(
    batch_size: int,
    num_workers: int,
    reader_threads: int,
    max_frames: int,
    val_fraction: float,
    num_classes: int | None,
) -> None:
    """ConfigError naming the first out-of-range setting."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if num_workers < 0 or reader_threads < 0:
        raise ConfigError(f"num_workers={num_workers} and reader_threads={reader_threads} must be >= 0")
    if num_workers and reader_threads:
        raise ConfigError(
            f"num_workers={num_workers} and reader_threads={reader_threads}: read in worker processes or in "
            "threads, not both; set one of them to 0"
        )
    if max_frames < 1:
        raise ConfigError(f"max_frames={max_frames} must be >= 1")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be >= 1")


__all__ = ["SPLITS", "ViewProvider", "YT8MDataModule"]
