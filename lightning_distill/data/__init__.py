"""The data path: TFRecord reading -> HDF5 frame store -> frame samplers -> LightningDataModule."""

from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.records import VideoRecord
from lightning_distill.data.datamodule import ViewProvider, YT8MDataModule
from lightning_distill.data.normalization import (
    FeatureNormalizer,
    FrameL2Normalization,
    NoNormalization,
    ReverseWhitening,
)
from lightning_distill.data.samplers import (
    AllFramesSampler,
    FirstMiddleLastSampler,
    FirstSampler,
    FrameSampler,
    LastSampler,
    MiddleSampler,
    RandomSampler,
    UniformSampler,
)
