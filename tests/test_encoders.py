"""Properties every video encoder keeps: shapes, gradients, padding invariance, learning, compatibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_distill.models import HRNN, LogisticHead, NetVLAD, NeXtVLAD, VideoEncoder

# Every registered family (a new one is tested by defining its ``key``).
ENCODERS = list(VideoEncoder.registry.values())
# Dropout off wherever outputs are compared across calls.
DETERMINISTIC = {cls: {"dropout": 0.0} for cls in ENCODERS if "dropout" in cls.__init__.__code__.co_varnames}


def make_batch(encoder: VideoEncoder, lengths: list[int], slots: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random frames for videos of the given lengths, padded with exact zeros to ``slots``."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(len(lengths), slots, encoder.input_dim, generator=generator)
    mask = torch.arange(slots)[None, :] < torch.tensor(lengths)[:, None]
    return frames * mask.unsqueeze(-1), mask


def pad(frames: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    return F.pad(frames, (0, 0, 0, extra)), F.pad(mask, (0, extra))


@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_shapes_finite_and_zero_state_at_padding(encoder_cls):
    # 11 slots: not a multiple of HRNN's tiny block length (4); one video holds a single frame.
    encoder = encoder_cls.tiny().eval()
    frames, mask = make_batch(encoder, [11, 6, 1], slots=11)
    out = encoder(frames, mask)
    assert out.representation.shape == (3, encoder.output_dim)
    assert out.intermediate.shape[:2] == (3, 11)
    assert torch.isfinite(out.representation).all() and torch.isfinite(out.intermediate).all()
    assert (out.intermediate[~mask] == 0).all()
    assert out.intermediate[mask].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_every_parameter_learns(encoder_cls):
    encoder = encoder_cls.tiny().train()
    frames, mask = make_batch(encoder, [9, 5, 2], slots=9)
    # A random projection: a plain sum is blind to parameters feeding a batch norm.
    projection = torch.randn(encoder.output_dim)
    (encoder(frames, mask).representation @ projection).sum().backward()
    silent = [name for name, p in encoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not silent


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_padding_does_not_change_the_output(encoder_cls, mode):
    torch.manual_seed(0)
    encoder = encoder_cls.tiny(**DETERMINISTIC.get(encoder_cls, {}))
    frames, mask = make_batch(encoder, [7, 3, 1, 5], slots=7)
    encoder.train()
    encoder(frames * 3 + 1, mask)  # moves the running statistics away from their initial 0 / 1
    encoder.train(mode == "train")
    short = encoder(frames, mask)
    long = encoder(*pad(frames, mask, extra=13))
    torch.testing.assert_close(long.representation, short.representation, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long.intermediate[:, :7], short.intermediate, atol=1e-5, rtol=1e-4)
    assert (long.intermediate[:, 7:] == 0).all()


def test_nextvlad_masks_follow_the_number_of_input_frames():
    # The original hard-codes 300 frames; a 7-frame student view must work and match its 300-slot padding.
    encoder = NeXtVLAD.tiny(dropout=0.0).eval()
    frames, mask = make_batch(encoder, [7, 7], slots=7)
    short = encoder(frames, mask)
    long = encoder(*pad(frames, mask, extra=293))
    torch.testing.assert_close(long.representation, short.representation, atol=1e-5, rtol=1e-4)
    # Each real frame's weighted assignments over the K clusters of a group sum to that group's attention,
    # a sigmoid in (0, 1); padded frames carry none.
    rgb = short.intermediate[..., : encoder.groups * encoder.num_clusters].reshape(2, 7, encoder.groups, -1)
    attention = rgb.sum(-1)
    assert ((attention > 0) & (attention < 1)).all()
    assert (long.intermediate[:, 7:] == 0).all()


def reference_hrnn(encoder: HRNN, frames: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """H-RNN written the slow, obvious way: one video and one block at a time, no padding anywhere."""
    states = []
    for video, length in zip(frames, lengths):
        real = video[:length]
        block_states = []
        for start in range(0, length, encoder.block_length):
            _, (h, c) = encoder.lower(real[start : start + encoder.block_length].unsqueeze(0))
            block_states.append(torch.cat([t for layer in zip(c, h) for t in layer], dim=-1))
        _, (h, c) = encoder.upper(torch.stack(block_states, dim=1))
        states.append(torch.cat([t for layer in zip(c, h) for t in layer], dim=-1))
    return torch.cat(states)


def test_hrnn_matches_a_block_by_block_reference():
    encoder = HRNN.tiny(block_length=4).eval()
    lengths = [11, 6, 1, 4]
    frames, mask = make_batch(encoder, lengths, slots=11)
    out = encoder(frames, mask)
    torch.testing.assert_close(out.representation, reference_hrnn(encoder, frames, lengths), atol=1e-5, rtol=1e-4)
    # The intermediate state of frame 5 is the lower LSTM's output after frames 4 and 5 (its block starts at 4).
    top, _ = encoder.lower(frames[:1, 4:6])
    torch.testing.assert_close(out.intermediate[0, 5], top[0, -1])


def test_hrnn_rejects_masks_that_are_not_a_prefix():
    encoder = HRNN.tiny()
    frames, mask = make_batch(encoder, [5, 3], slots=5)
    mask[1, 4] = True
    with pytest.raises(ValueError, match="prefix"):
        encoder(frames, mask)


@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_tiny_model_overfits_a_few_videos(encoder_cls):
    torch.manual_seed(0)
    encoder = encoder_cls.tiny(**DETERMINISTIC.get(encoder_cls, {})).train()
    head = LogisticHead(encoder.output_dim, 6)
    frames, mask = make_batch(encoder, [12, 9, 4, 1, 12, 7, 3, 10], slots=12)
    labels = (torch.rand(8, 6) < 0.4).float()
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(150):
        loss = F.binary_cross_entropy(head(encoder(frames, mask).representation), labels)
        losses.append(loss.item())
        if loss.item() < 0.2 * losses[0]:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert losses[-1] < 0.2 * losses[0]


STUDENTS = {HRNN: {"block_length": 2}, NetVLAD: {}, NeXtVLAD: {"dropout": 0.1}}


@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_student_differs_from_teacher_only_in_free_keys(encoder_cls):
    teacher, student = encoder_cls.tiny(), encoder_cls.tiny(**STUDENTS[encoder_cls])
    t_arch, s_arch = teacher.architecture(), student.architecture()
    assert t_arch.keys() == s_arch.keys() and t_arch["family"] == encoder_cls.__name__
    assert {k for k in t_arch if t_arch[k] != s_arch[k]} <= set(encoder_cls.student_free_keys)
    # ...which is what makes the student able to start from the teacher's weights.
    student.load_state_dict(teacher.state_dict())
    # A change outside the free keys is visible.
    wider = encoder_cls.tiny(hidden_size=24).architecture()
    assert {k for k in t_arch if t_arch[k] != wider[k]} - set(encoder_cls.student_free_keys)


@pytest.mark.parametrize("encoder_cls", ENCODERS)
def test_bf16_autocast_approximates_float32(encoder_cls):
    encoder = encoder_cls.tiny(**DETERMINISTIC.get(encoder_cls, {})).train()
    frames, mask = make_batch(encoder, [8, 5, 1], slots=8)
    exact = encoder(frames, mask).representation
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(frames, mask)
        probabilities = LogisticHead(encoder.output_dim, 4)(out.representation)
    assert out.representation.shape == (3, encoder.output_dim)
    assert torch.isfinite(out.intermediate.float()).all()
    assert F.cosine_similarity(out.representation.float(), exact, dim=1).min() > 0.98
    assert probabilities.dtype == torch.float32
    (out.representation.float() @ torch.randn(encoder.output_dim)).sum().backward()


def lstm_parameters(inputs: int, hidden: int) -> int:
    return 4 * (inputs * hidden + hidden * hidden + 2 * hidden)


def test_default_hrnn_has_the_paper_size():
    encoder = HRNN()
    lower = lstm_parameters(1152, 1024) + lstm_parameters(1024, 1024)
    upper = lstm_parameters(4096, 1024) + lstm_parameters(1024, 1024)  # input: a block's [c1, h1, c2, h2]
    assert sum(p.numel() for p in encoder.parameters()) == lower + upper == 46_694_400
    assert encoder.output_dim == 4096
