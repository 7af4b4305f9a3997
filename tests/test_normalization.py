"""Feature normalisers against hand-computed values; padding must stay exactly zero through each of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_distill.data.normalization import (
    FrameL2Normalization,
    NoNormalization,
    ReverseWhitening,
    dequantize_frames,
)
from lightning_distill.data.yt8m import dequantize
from lightning_distill.errors import DataError

D = 1152


def _frames() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 3, D): video 0 holds a 3-4-5 frame and a frame of ones, video 1 one frame; the rest is padding."""
    frames = torch.zeros(2, 3, D)
    frames[0, 0, 0], frames[0, 0, 1024 + 5] = 3.0, 4.0  # rgb and audio share one norm: 5
    frames[0, 1] = 1.0
    frames[1, 0, :4] = torch.tensor([-1.0, 2.0, -2.0, 0.0])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return frames, mask


def test_dequantisation_is_the_starter_codes_in_numpy_and_torch():
    # The starter code maps byte q to q * (2 - (-2)) / 255 + bias, bias = (2 - (-2)) / 2**8 / 2 + (-2) = -1.9921875.
    quantized = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    expected = [-1.9921875, -1.9921875 + 4 / 255, -1.9921875 + 512 / 255, 2.0078125]
    assert dequantize(quantized)[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert dequantize_frames(torch.from_numpy(quantized))[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert dequantize_frames(torch.from_numpy(quantized)).dtype == torch.float32


def test_l2_normalises_the_joint_rgb_audio_vector():
    frames, mask = _frames()
    out = FrameL2Normalization()(frames, mask)
    assert out[0, 0, 0] == pytest.approx(0.6) and out[0, 0, 1024 + 5] == pytest.approx(0.8)
    assert torch.allclose(out[0, 1], torch.full((D,), 1 / math.sqrt(D)))
    assert out[1, 0, :4].tolist() == pytest.approx([-1 / 3, 2 / 3, -2 / 3, 0.0])
    assert torch.equal(out[~mask], torch.zeros(3, D))  # zero frames stay zero, not NaN


def test_no_normalization_is_the_identity():
    frames, mask = _frames()
    assert torch.equal(NoNormalization()(frames, mask), frames)


def test_reverse_whitening_rescales_rgb_only(tmp_path):
    eigenvalues = np.full((2048, 1), 4.0, dtype=np.float32)
    eigenvalues[1] = 9.0
    path = tmp_path / "eig.npy"
    np.save(path, eigenvalues)
    frames, mask = _frames()
    out = ReverseWhitening(str(path), epsilon=0.5)(frames, mask)
    shift = 4 / 512
    assert out[0, 1, 0].item() == pytest.approx((1 - shift) * (2 + 0.5))
    assert out[0, 1, 1].item() == pytest.approx((1 - shift) * (3 + 0.5))
    assert out[0, 0, 2].item() == pytest.approx((0 - shift) * (2 + 0.5))  # a real zero is shifted too
    assert torch.equal(out[..., 1024:], frames[..., 1024:])  # audio unchanged
    assert torch.equal(out[~mask], torch.zeros(3, D))


def test_reverse_whitening_defaults_to_the_packaged_nextvlad_eigenvalues():
    frames, mask = _frames()
    out = ReverseWhitening()(frames, mask)
    # NeXtVLAD's first PCA eigenvalue is 14.738506
    assert out[0, 1, 0].item() == pytest.approx((1 - 4 / 512) * (math.sqrt(14.738506) + 1e-4), rel=1e-6)


@pytest.mark.parametrize("normalizer", [NoNormalization(), FrameL2Normalization(), ReverseWhitening()], ids=repr)
def test_padding_stays_exactly_zero(normalizer):
    frames, mask = torch.rand(4, 6, D) * 4 - 2, torch.rand(4, 6) > 0.5
    frames[~mask] = 0.0
    out = normalizer(frames, mask)
    assert out.shape == frames.shape and out.dtype == torch.float32
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask])) and out.isfinite().all()


def test_missing_eigenvalues_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ReverseWhitening(str(tmp_path / "absent.npy"))


def test_too_few_eigenvalues_is_a_data_error(tmp_path):
    np.save(tmp_path / "short.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(DataError, match="need >= 1024"):
        ReverseWhitening(str(tmp_path / "short.npy"))
