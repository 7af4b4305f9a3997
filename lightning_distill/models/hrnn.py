"""H-RNN: a lower LSTM encodes blocks of consecutive frames, an upper LSTM encodes the sequence of blocks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_distill.models.encoder import EncoderOutput, VideoEncoder


class HRNN(VideoEncoder):
    """Hierarchical LSTM of the paper (section 3.1), as in the authors' code.

    The T input slots are cut into blocks of ``block_length`` consecutive slots (the last block padded).
    A lower LSTM reads each block; its final state [c1, h1, c2, h2, ...] (every layer's cell and hidden state,
    concatenated, as the authors' TF ``MultiRNNCell(state_is_tuple=False)``) is one step of the upper LSTM,
    which reads the video's non-empty blocks in order.

    Representation: the upper LSTM's final state [c1, h1, c2, h2, ...], 2 * num_layers * hidden_size
    (4096 by default): the vector the authors' code classified and matched with L_rep.
    Intermediate: the lower LSTM's top-layer output at every input slot, (B, T, hidden_size), zero at
    padding, so L_rep^I can compare teacher and student states at the same video frames.

    Padding never reaches the LSTMs: each block is packed with its own number of real frames, blocks holding
    no real frame are left out, and the upper LSTM is packed with the number of non-empty blocks. The real
    frames of every video must be a prefix of its slots (checked) and a video must hold at least one frame.

    Args:
        input_dim: D, features per frame.
        hidden_size: cells per LSTM layer, in both LSTMs.
        num_layers: stacked layers in each LSTM.
        block_length: l, input slots per block (the paper's teacher uses 20, students 5 or 3).
        dropout: dropout between stacked LSTM layers (needs num_layers > 1).
        student_block_length: l when the encoder reads k chosen frames (a student or a baseline), so one family
            config serves teacher and students; None keeps ``block_length`` for every view. Applied by the module
            that owns the encoder (``for_frames``).
    """

    key = "hrnn"

    student_free_keys = ("block_length",)

    def __init__(
        self,
        input_dim: int = 1152,
        hidden_size: int = 1024,
        num_layers: int = 2,
        block_length: int = 20,
        dropout: float = 0.0,
        student_block_length: int | None = None,
    ) -> None:
        super().__init__()
        if block_length < 1 or (student_block_length is not None and student_block_length < 1):
            raise ValueError(f"block lengths must be >= 1, got {block_length} and {student_block_length}")
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.block_length = block_length
        self._all_frames_block_length = block_length
        self.student_block_length = student_block_length
        self.output_dim = 2 * num_layers * hidden_size
        self.lower = nn.LSTM(input_dim, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.upper = nn.LSTM(self.output_dim, hidden_size, num_layers, batch_first=True, dropout=dropout)
        for lstm in (self.lower, self.upper):
            _open_forget_gates(lstm)

    @classmethod
    def tiny(cls, **overrides: Any) -> HRNN:
        """16 cells, 2 layers, blocks of 4 slots."""
        return cls(**{"hidden_size": 16, "num_layers": 2, "block_length": 4, **overrides})

    def for_frames(self, k: int | None) -> None:
        """Blocks of ``student_block_length`` for a view of k chosen frames (when set), else ``block_length``."""
        use_student = k is not None and self.student_block_length is not None
        self.block_length = self.student_block_length if use_student else self._all_frames_block_length

    def architecture(self) -> dict[str, Any]:
        return {
            "family": "HRNN",
            "input_dim": self.input_dim,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "block_length": self.block_length,
        }

    def forward(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        """(B, T, D) frames, (B, T) bool prefix mask -> representation (B, 2LH), intermediate (B, T, H)."""
        # The LSTMs run in float32 under any autocast: cuDNN has bf16 RNNs only from 9.13 and PyTorch's
        # fallback LSTM kernels none, and float32 (TF32 on tensor cores) keeps long recurrences accurate.
        with torch.autocast(frames.device.type, enabled=False):
            return self._encode(frames.float(), mask)

    def forward_all_frames(self, frames: Tensor) -> Tensor:
        """(B, T, D) frames, all real, T a multiple of ``block_length`` -> (B, 2LH) representation.

        Without padding every block is full, so both LSTMs run unpacked on fixed shapes (exportable); the result
        is ``forward``'s up to float rounding.
        """
        batch, slots, dim = frames.shape
        if slots % self.block_length:
            raise ValueError(f"HRNN.forward_all_frames needs T a multiple of block_length={self.block_length}, got {slots}")
        with torch.autocast(frames.device.type, enabled=False):
            blocks = frames.float().reshape(-1, self.block_length, dim)
            _, (h, c) = self.lower(blocks)
            block_states = _concat_state(h, c).reshape(batch, slots // self.block_length, self.output_dim)
            _, (h, c) = self.upper(block_states)
            return _concat_state(h, c)

    def _encode(self, frames: Tensor, mask: Tensor) -> EncoderOutput:
        batch, slots, dim = frames.shape
        length = self.block_length
        num_blocks = -(-slots // length)
        lengths = _prefix_lengths(mask).cpu()

        # Blocks as rows: (B * num_blocks, l, D), row b * num_blocks + j is block j of video b.
        blocks = F.pad(frames, (0, 0, 0, num_blocks * length - slots)).reshape(batch * num_blocks, length, dim)
        starts = torch.arange(num_blocks) * length
        block_lengths = (lengths[:, None] - starts[None, :]).clamp(0, length).reshape(-1)
        # pack_padded_sequence needs lengths >= 1, so the lower LSTM sees the non-empty blocks only.
        filled = block_lengths.nonzero().squeeze(1)
        rows = filled.to(frames.device)
        lower_out, (h, c) = self.lower(
            pack_padded_sequence(blocks[rows], block_lengths[filled], batch_first=True, enforce_sorted=False)
        )
        lower_out, _ = pad_packed_sequence(lower_out, batch_first=True, total_length=length)

        per_slot = lower_out.new_zeros(batch * num_blocks, length, self.hidden_size).index_copy(0, rows, lower_out)
        intermediate = per_slot.reshape(batch, num_blocks * length, self.hidden_size)[:, :slots]

        states = _concat_state(h, c)
        block_states = states.new_zeros(batch * num_blocks, self.output_dim).index_copy(0, rows, states)
        # Real frames form a prefix, so each video's non-empty blocks are its first ceil(length / l) blocks.
        blocks_per_video = (block_lengths.reshape(batch, num_blocks) > 0).sum(1)
        _, (h, c) = self.upper(
            pack_padded_sequence(
                block_states.reshape(batch, num_blocks, self.output_dim),
                blocks_per_video,
                batch_first=True,
                enforce_sorted=False,
            )
        )
        return EncoderOutput(representation=_concat_state(h, c), intermediate=intermediate)


def _prefix_lengths(mask: Tensor) -> Tensor:
    """(B, T) bool mask -> (B,) real-frame counts; raises unless every mask is a non-empty prefix."""
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(mask, prefix) or bool((lengths == 0).any()):
        raise ValueError("HRNN needs each video's real frames as a non-empty prefix of its slots (mask 1..1 0..0)")
    return lengths


def _concat_state(h: Tensor, c: Tensor) -> Tensor:
    """(L, N, H) hidden and cell states -> (N, 2LH) as [c1, h1, c2, h2, ...] (the authors' state layout)."""
    layers, rows, hidden = h.shape
    return torch.stack((c, h), dim=1).permute(2, 0, 1, 3).reshape(rows, 2 * layers * hidden)


def _open_forget_gates(lstm: nn.LSTM) -> None:
    """Start every forget-gate bias at 1, as the authors' ``BasicLSTMCell(forget_bias=1.0)``.

    An open forget gate lets gradients reach the start of a block early in training. PyTorch orders the gates
    (input, forget, cell, output) and adds two bias vectors: the first carries the 1, the second 0.
    """
    hidden = lstm.hidden_size
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            getattr(lstm, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(1.0)
            getattr(lstm, f"bias_hh_l{layer}")[hidden : 2 * hidden].fill_(0.0)
