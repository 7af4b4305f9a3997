"""MAC counts against formulas worked out by hand, and the cost profile of an encoder + head."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

from lightning_distill.evaluation.flops import CostProfile, count_macs, profile_model, recurrent_macs
from lightning_distill.models.encoder import EncoderOutput
from lightning_distill.models.hrnn import HRNN


class LastState(nn.Module):
    """An LSTM (packed or not) whose top layer's last hidden state goes through a linear layer."""

    def __init__(self, lstm: nn.LSTM, out_features: int) -> None:
        super().__init__()
        self.lstm = lstm
        self.linear = nn.Linear(lstm.hidden_size, out_features)

    def forward(self, sequence: Tensor) -> Tensor:
        _, (h, _) = self.lstm(sequence)
        return self.linear(h[-1])


class TinyLSTMEncoder(nn.Module):
    """Frames (B, T, D) -> the last hidden state of a 1-layer LSTM (B, H), a stand-in for a VideoEncoder."""

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.lstm = nn.LSTM(input_dim, hidden, batch_first=True)

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        _, (h, _) = self.lstm(frames)
        return EncoderOutput(representation=h[-1])


def test_linear_and_bmm():
    # (3, 7) @ (7, 5): 3 * 7 * 5 = 105 MACs; the bias add is elementwise and not counted.
    assert count_macs(nn.Linear(7, 5), torch.randn(3, 7)).total == 105

    class Bmm(nn.Module):
        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return torch.bmm(a, b)

    # 2 batches of (3, 4) @ (4, 5): 2 * 3 * 4 * 5 = 120.
    assert count_macs(Bmm(), torch.randn(2, 3, 4), torch.randn(2, 4, 5)).total == 120


def test_unpacked_single_layer_lstm():
    # 4 videos x 5 steps; per step 4 gates * 16 cells * (8 inputs + 16 recurrent) = 1536 -> 20 * 1536 = 30720.
    count = count_macs(nn.LSTM(8, 16, batch_first=True), torch.randn(4, 5, 8))
    assert (count.counted, count.recurrent) == (0, 30720)


def test_two_layer_lstm_over_30_steps_unpacked_and_packed():
    # Per step: layer 1 4*12*(10+12) = 1056, layer 2 4*12*(12+12) = 1152 -> 2208. Linear head: 3 * 12 * 3 = 108.
    model = LastState(nn.LSTM(10, 12, num_layers=2, batch_first=True), out_features=3)
    frames = torch.randn(3, 30, 10)
    assert count_macs(model, frames).total == 3 * 30 * 2208 + 108
    # Packed with lengths 30, 17, 4: only the 51 real steps run.
    packed = pack_padded_sequence(frames, torch.tensor([30, 17, 4]), batch_first=True)
    count = count_macs(model, packed)
    assert (count.counted, count.recurrent) == (108, 51 * 2208)


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_bidirectional_projected_lstm_formula():
    # in 6, hidden 8, proj 4, 2 layers, both directions. Layer 0: 4*8*(6+4) + 8*4 = 352; layer 1 reads 2*4 = 8:
    # 4*8*(8+4) + 8*4 = 416. Per step 2 * (352 + 416) = 1536.
    lstm = nn.LSTM(6, 8, num_layers=2, proj_size=4, bidirectional=True, batch_first=True)
    assert recurrent_macs(lstm, steps=10) == 15360
    assert count_macs(lstm, torch.randn(2, 5, 6)).total == 15360


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize(
    "rnn",
    [
        nn.LSTM(6, 8, num_layers=2, batch_first=True),
        nn.LSTM(6, 8, num_layers=2, proj_size=4, bidirectional=True, batch_first=True),
        nn.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True),
    ],
    ids=["lstm", "lstm-bi-proj", "gru-bi"],
)
def test_formula_agrees_with_the_counter_where_it_sees_the_matmuls(rnn):
    # A packed sequence decomposes into per-step matmuls on CPU, which FlopCounterMode counts itself: an
    # independent check of the formula, and count_macs must not add its own count on top.
    packed = pack_padded_sequence(torch.randn(3, 7, 6), torch.tensor([7, 5, 2]), batch_first=True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        rnn(packed)
    if counter.get_total_flops() == 0:
        pytest.skip("this torch build runs packed RNNs fused; nothing to compare against")
    assert counter.get_total_flops() // 2 == recurrent_macs(rnn, steps=14)
    assert count_macs(rnn, packed).total == recurrent_macs(rnn, steps=14)


def test_profile_of_a_small_encoder_and_head():
    encoder, head = TinyLSTMEncoder(input_dim=10, hidden=6), nn.Sequential(nn.Linear(6, 5), nn.Sigmoid())
    encoder.eval()
    head.train()
    profile = profile_model(encoder, head, num_frames=9, batch_size=4, repeats=2)
    # Encoder: 9 steps * 4*6*(10+6) = 9 * 384 = 3456 MACs; head 6 * 5 = 30 per video.
    assert profile.encoder_macs_per_video == 3456
    assert profile.head_macs_per_video == 30
    assert profile.macs_per_video == 3486 and profile.flops_per_video == 6972
    # Params: LSTM 4*6*(10+6) weights + 2 * 4*6 biases = 432; head 6*5 + 5 = 35.
    assert (profile.encoder_params, profile.head_params, profile.params) == (432, 35, 467)
    assert profile.videos_per_s > 0
    assert head.training and not encoder.training  # each module's mode restored
    record = profile.to_dict()
    assert record["params"] == 467 and record["macs_per_video"] == 3486 and record["flops_per_video"] == 6972
    assert (record["encoder_flops_per_video"], record["head_flops_per_video"]) == (6912, 60)
    assert isinstance(profile, CostProfile) and record["videos_per_s"] == profile.videos_per_s


def test_hrnn_cost_scales_with_frames():
    encoder = HRNN.tiny(input_dim=20)  # 16 cells, 2 layers, blocks of 4
    teacher = count_macs(encoder, torch.randn(1, 40, 20), torch.ones(1, 40, dtype=torch.bool)).total
    student = count_macs(encoder, torch.randn(1, 8, 20), torch.ones(1, 8, dtype=torch.bool)).total
    assert student / teacher == pytest.approx(8 / 40, rel=0.03)
    # By hand: lower LSTM per frame 4*16*(20+16) + 4*16*32 = 4352; upper per block (input 2*2*16 = 64)
    # 4*16*(64+16) + 4*16*32 = 7168; 8 frames in 2 blocks: 8 * 4352 + 2 * 7168.
    assert student == 8 * 4352 + 2 * 7168


def test_paper_size_hrnn_per_frame_macs():
    """The paper's H-RNN "17.3M FLOPs per frame" is the lower LSTM's MACs; ours adds the upper LSTM.

    Lower LSTM (2 x 1024 cells over 1152-d frames), per frame: 4*1024*(1152+1024) + 4*1024*(1024+1024)
    = 8,912,896 + 8,388,608 = 17,301,504 MACs: the paper's 17.3M exactly. The upper LSTM reads the lower one's
    4096-d final state once per block: 4*1024*(4096+1024) + 4*1024*2048 = 29,360,128 MACs per block. At k = 30
    frames in blocks of 5 that is 30 * 17.3M + 6 * 29.4M = 0.695 G MACs; the paper reports 0.520 G = 30 * 17.3M,
    so it left the upper LSTM out. (Teacher, 300 frames in blocks of 20: 5.19 G + 0.44 G = 5.63 G here, 5.058 G
    in the paper, which does not match 300 * 17.3M either.)
    """
    torch.manual_seed(0)
    encoder = HRNN(hidden_size=1024, num_layers=2, block_length=5)
    macs = count_macs(encoder, torch.randn(1, 30, 1152), torch.ones(1, 30, dtype=torch.bool)).total
    assert recurrent_macs(encoder.lower, steps=1) == 17_301_504
    assert recurrent_macs(encoder.upper, steps=1) == 29_360_128
    assert macs == 30 * 17_301_504 + 6 * 29_360_128
