"""Feature normalisation applied on the device to dequantised frames, after the batch is transferred.

The loader ships uint8 frames (4x less to copy than float32); the data module's ``on_after_batch_transfer``
dequantises them on the device, zeroes the padding and then calls the configured ``FeatureNormalizer``. Every
normaliser keeps padding slots exactly zero, so a model may sum over T without masking.

In YAML a normaliser is chosen by class path::

    normalization:
      class_path: lightning_distill.data.normalization.ReverseWhitening
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_distill.class_paths import class_path
from lightning_distill.data.yt8m import DEQUANT_BIAS, DEQUANT_SCALE, RGB_DIM
from lightning_distill.errors import ConfigError, DataError

# The dequantised value of the quantisation grid's centre: NeXtVLAD shifts rgb by it before rescaling.
_RGB_SHIFT = 4.0 / 512.0


def dequantize_frames(frames: Tensor) -> Tensor:
    """uint8 YouTube-8M features -> float32, as the starter code dequantises them (``yt8m.dequantize`` in torch).

    It lives here, not in ``yt8m``, because the data commands import ``yt8m`` without torch.
    """
    return frames.float() * DEQUANT_SCALE + DEQUANT_BIAS


class FeatureNormalizer(ABC):
    """Maps dequantised frames to model inputs, keeping padding exactly zero."""

    @abstractmethod
    def __call__(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D) float32 frames, zero where ``mask`` (B, T) bool is False -> (B, T, D) float32, same zeros."""

    def init_args(self) -> dict[str, object]:
        """The plain constructor arguments that rebuild this normaliser (see ``normalization_config``)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoNormalization(FeatureNormalizer):
    """Dequantised features as they are."""

    def __call__(self, frames: Tensor, mask: Tensor) -> Tensor:
        """Return ``frames`` unchanged."""
        return frames


class FrameL2Normalization(FeatureNormalizer):
    """Unit L2 norm for each frame's joint 1152-d (rgb + audio) vector, as the YouTube-8M starter code does.

    A zero frame (padding) stays zero rather than becoming NaN.
    """

    def __call__(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D), each non-zero frame divided by its L2 norm."""
        return F.normalize(frames, p=2.0, dim=-1)


class ReverseWhitening(FeatureNormalizer):
    """NeXtVLAD's input scaling: undo the PCA whitening of the rgb features; audio is left unchanged.

    rgb becomes ``(x - 4/512) * (sqrt(eigenvalues[:1024]) + epsilon)``, where the eigenvalues are those of the
    PCA that produced YouTube-8M's rgb features.

    Args:
        eigenvalues: path to a .npy file of at least 1024 PCA eigenvalues (e.g. 2048x1 float32); default: the
            copy shipped with vdistill (NeXtVLAD's ``eigenvals.npy``).
        epsilon: added to each square root so no dimension is scaled to zero.
    """

    def __init__(self, eigenvalues: str | None = None, epsilon: float = 1e-4) -> None:
        self.eigenvalues = eigenvalues
        self.epsilon = epsilon
        values = _load_eigenvalues(eigenvalues)
        self._scale = torch.from_numpy(np.sqrt(values[:RGB_DIM]) + np.float32(epsilon))

    def __call__(self, frames: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D): rgb rescaled, audio unchanged, padding zero."""
        # Moved once and kept on the frames' device, so later batches pay no copy.
        self._scale = self._scale.to(frames.device)
        rgb = (frames[..., :RGB_DIM] - _RGB_SHIFT) * self._scale
        # The shift would turn zero padding into -4/512 * scale; re-zero it.
        rgb = rgb * mask[..., None]
        return torch.cat([rgb, frames[..., RGB_DIM:]], dim=-1)

    def init_args(self) -> dict[str, object]:
        return {"eigenvalues": self.eigenvalues, "epsilon": self.epsilon}

    def __repr__(self) -> str:
        return f"ReverseWhitening(eigenvalues={self.eigenvalues!r}, epsilon={self.epsilon})"


def normalization_config(normalizer: FeatureNormalizer) -> dict[str, object]:
    """``{"class_path": ..., "init_args": {...}}`` of ``normalizer``: plain data, kept in a model's checkpoint so
    the inputs it was trained on can be rebuilt (a cross-family teacher's targets, see ``StudentModule``)."""
    return {"class_path": class_path(type(normalizer)), "init_args": normalizer.init_args()}


def normalizer_from_config(config: dict[str, object], source: str) -> FeatureNormalizer:
    """Rebuild a normaliser from ``normalization_config``'s record.

    Only a ``FeatureNormalizer`` subclass already imported is built (a record read from a checkpoint must not name
    arbitrary code to run).

    Raises:
        ConfigError: the record names no such class or its arguments do not fit, naming ``source``.
    """
    known = {class_path(cls): cls for cls in _subclasses(FeatureNormalizer)}
    cls = known.get(str(config.get("class_path")))
    if cls is None:
        raise ConfigError(
            f"{source} records the input normalisation {config.get('class_path')!r}, which is not a known "
            "FeatureNormalizer: import the module that defines it, or train the model again"
        )
    try:
        return cls(**dict(config.get("init_args") or {}))
    except TypeError as error:
        raise ConfigError(
            f"{source} records arguments {config.get('init_args')} that {cls.__name__} refuses: {error}"
        ) from None


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def _load_eigenvalues(path: str | None) -> np.ndarray:
    """The eigenvalues as a flat float32 array, from ``path`` or the packaged copy; DataError if unusable."""
    source = Path(path) if path else resources.files("lightning_distill.data") / "resources/nextvlad_pca_eigenvals.npy"
    if not source.is_file():
        raise DataError(
            f"eigenvalues file {source} not found; pass eigenvalues=<path to eigenvals.npy> or leave it unset"
        )
    with source.open("rb") as f:
        try:
            values = np.load(f).astype(np.float32).ravel()
        except ValueError as error:
            raise DataError(
                f"eigenvalues file {source} is not a .npy array ({error}); pass NeXtVLAD's eigenvals.npy"
            ) from error
    if values.size < RGB_DIM or (values < 0).any():
        raise DataError(
            f"eigenvalues file {source} holds {values.size} values (need >= {RGB_DIM}, all >= 0); "
            "pass NeXtVLAD's eigenvals.npy"
        )
    return values


__all__ = [
    "FeatureNormalizer",
    "FrameL2Normalization",
    "NoNormalization",
    "ReverseWhitening",
    "normalization_config",
    "normalizer_from_config",
]
