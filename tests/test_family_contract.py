"""The contract every registered encoder family keeps beyond the basics in test_encoders.py: a cost that grows
by a fixed amount per frame, a mask-free path equal to the masked one, and a faithful export. A family added to
``VideoEncoder.registry`` (by defining ``key``) is picked up here without editing this file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_distill.data.normalization import FrameL2Normalization
from lightning_distill.data.samplers import UniformSampler
from lightning_distill.deployment.export import export_network, load_exported, metadata_for
from lightning_distill.deployment.network import RawFramesClassifier
from lightning_distill.evaluation.flops import count_macs
from lightning_distill.models import LogisticHead, VideoEncoder

FAMILIES = sorted(VideoEncoder.registry.items())


def tiny(cls: type[VideoEncoder]) -> VideoEncoder:
    torch.manual_seed(0)
    encoder = cls.tiny(**({"dropout": 0.0} if "dropout" in cls.__init__.__code__.co_varnames else {}))
    return encoder.eval()


@pytest.mark.parametrize(("key", "cls"), FAMILIES)
def test_cost_grows_by_the_same_amount_per_frame(key, cls):
    encoder = tiny(cls)
    macs = {t: count_macs(encoder, torch.randn(1, t, encoder.input_dim), torch.ones(1, t, dtype=torch.bool)).total
            for t in (12, 24, 36)}
    assert macs[36] - macs[24] == macs[24] - macs[12] > 0  # affine in T: a student's k frames cost k per-frame units


@pytest.mark.parametrize(("key", "cls"), FAMILIES)
def test_the_mask_free_path_equals_the_masked_one(key, cls):
    encoder = tiny(cls)
    frames = torch.randn(3, 12, encoder.input_dim)
    with torch.no_grad():
        masked = encoder(frames, torch.ones(3, 12, dtype=torch.bool)).representation
        assert torch.allclose(encoder.forward_all_frames(frames), masked, atol=1e-5)


@pytest.mark.parametrize(("key", "cls"), FAMILIES)
def test_the_exported_network_matches_the_encoder_and_head(key, cls, tmp_path):
    encoder = tiny(cls)
    encoder.for_frames(12)
    network = RawFramesClassifier(encoder, LogisticHead(encoder.output_dim, 5), FrameL2Normalization())
    path = export_network(network, tmp_path / "m.pt", fmt="torchscript",
                          metadata=metadata_for("TeacherModule", network, 12, UniformSampler(12), 300))
    run, metadata = load_exported(path)
    assert json.loads(metadata["sampler"])["init_args"]["k"] == 12 and metadata["num_classes"] == "5"
    rgb = np.random.default_rng(0).integers(0, 256, (4, 12, 1024), dtype=np.uint8)
    audio = np.random.default_rng(1).integers(0, 256, (4, 12, 128), dtype=np.uint8)
    frames = torch.from_numpy(np.concatenate([rgb, audio], axis=-1)).float() * (4 / 255) + (4 / 512 - 2)
    mask = torch.ones(4, 12, dtype=torch.bool)
    with torch.no_grad():
        expected = network.head(encoder(FrameL2Normalization()(frames, mask), mask).representation)
    assert np.abs(run({"rgb": rgb, "audio": audio}) - expected.numpy()).max() < 1e-5
