"""What a model costs per video: parameters, multiply-accumulates (MACs), FLOPs and measured inference speed.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, linear layers, convolutions, attention;
it reports 2 FLOPs per MAC) plus an analytic count for recurrent layers, which it misses: on CPU an unpacked
``nn.LSTM`` runs as one fused kernel it counts as 0, while a packed one decomposes into matmuls it does count.
To count both the same way, whatever the counter saw inside a recurrent layer is replaced by the formula.

Not counted anywhere: elementwise work (bias additions, activations, gate nonlinearities, LSTM cell updates,
normalisation, softmax). It is O(units) per step against O(units²) for the matmuls, under 1% for our models.

The paper's "FLOPs" (H-RNN: 17.3M per frame, 0.52 G at k = 30) are MACs by this definition: for its 2-layer,
1024-cell lower LSTM over 1152-d frames, 4·1024·(1152 + 1024) + 4·1024·(1024 + 1024) = 17,301,504 per frame.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode

from lightning_distill.errors import ConfigError
from lightning_distill.models.modes import eval_mode

# Gate matmuls per step of each recurrent cell type (nn.RNNBase.mode).
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass, by where the count comes from.

    Attributes:
        counted: MACs ``FlopCounterMode`` counted outside recurrent layers (its FLOPs / 2).
        recurrent: analytic MACs of every recurrent layer's gate matmuls (see ``recurrent_macs``).
    """

    counted: int
    recurrent: int

    @property
    def total(self) -> int:
        return self.counted + self.recurrent


def recurrent_macs(rnn: nn.RNNBase, steps: int) -> int:
    """MACs of ``steps`` time steps (summed over the batch) of every layer and direction of ``rnn``.

    Per step, layer and direction: gates · hidden · (layer input + recurrent input) for the input and recurrent
    gate matmuls (gates = 4 for LSTM, 3 for GRU, 1 for a plain RNN), plus hidden · proj_size for an LSTM
    projection. Layer 0's input is ``input_size``; deeper layers read the previous layer's output of every
    direction.
    """
    directions = 2 if rnn.bidirectional else 1
    out_size = rnn.proj_size or rnn.hidden_size
    per_step = 0
    for layer in range(rnn.num_layers):
        layer_input = rnn.input_size if layer == 0 else out_size * directions
        gate_macs = _GATES[rnn.mode] * rnn.hidden_size * (layer_input + out_size)
        per_step += directions * (gate_macs + rnn.hidden_size * rnn.proj_size)
    return steps * per_step


def _time_steps(rnn: nn.RNNBase, sequence: Tensor | PackedSequence) -> int:
    """Real (video, step) pairs in a recurrent layer's input: padding in a packed sequence is not computed."""
    if isinstance(sequence, PackedSequence):
        return int(sequence.batch_sizes.sum())
    if sequence.ndim == 2:  # unbatched (T, D)
        return sequence.shape[0]
    return sequence.shape[0] * sequence.shape[1]


def count_macs(module: nn.Module, *inputs: Any) -> MacCount:
    """MACs of ``module(*inputs)``, run once without gradients.

    Every recurrent submodule (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) is counted by ``recurrent_macs`` for the
    steps it actually ran (packed sequences: only real steps); what ``FlopCounterMode`` saw inside it, if it
    decomposed, is discarded so nothing counts twice.
    """
    recurrent = 0
    seen_inside = 0
    entry_flops: dict[int, int] = {}
    counter = FlopCounterMode(display=False)

    def on_entry(rnn: nn.Module, args: tuple[Any, ...]) -> None:
        entry_flops[id(rnn)] = counter.get_total_flops()

    def on_exit(rnn: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        nonlocal recurrent, seen_inside
        seen_inside += counter.get_total_flops() - entry_flops.pop(id(rnn))
        recurrent += recurrent_macs(rnn, _time_steps(rnn, args[0]))

    rnns = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    handles = [rnn.register_forward_pre_hook(on_entry) for rnn in rnns]
    handles += [rnn.register_forward_hook(on_exit) for rnn in rnns]
    try:
        with torch.no_grad(), counter:
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return MacCount(counted=(counter.get_total_flops() - seen_inside) // 2, recurrent=recurrent)


def inference_macs_by_part(encoder: nn.Module, head: nn.Module, num_frames: int) -> tuple[int, int]:
    """(encoder MACs, head MACs) of one video at ``num_frames`` real frames (no timing).

    The modules are put in eval mode for the count and given back in their mode.
    """
    frames = torch.randn(1, num_frames, encoder.input_dim, device=next(encoder.parameters()).device)
    mask = torch.ones(1, num_frames, dtype=torch.bool, device=frames.device)
    with eval_mode(encoder, head), torch.no_grad():
        representation = encoder(frames, mask).representation
        return count_macs(encoder, frames, mask).total, count_macs(head, representation).total


@dataclass(frozen=True)
class CostProfile:
    """Cost of one encoder + head at a given number of input frames.

    Attributes:
        num_frames: T, frames each video fed to the encoder.
        batch_size: videos per forward pass while counting and timing.
        device: where it was timed.
        encoder_params, head_params: parameter counts.
        encoder_macs_per_video, head_macs_per_video: MACs of one video's forward pass.
        videos_per_s: measured inference throughput (eval mode, no gradients, after warm-up): the median over the
            timed repeats.
        videos_per_s_min, videos_per_s_max: the slowest and fastest repeat.
        threads: torch's intra-op threads during the timing.
    """

    num_frames: int
    batch_size: int
    device: str
    encoder_params: int
    head_params: int
    encoder_macs_per_video: float
    head_macs_per_video: float
    videos_per_s: float
    videos_per_s_min: float
    videos_per_s_max: float
    threads: int

    @property
    def params(self) -> int:
        return self.encoder_params + self.head_params

    @property
    def macs_per_video(self) -> float:
        return self.encoder_macs_per_video + self.head_macs_per_video

    @property
    def flops_per_video(self) -> float:
        """2 FLOPs per MAC (one multiply, one add)."""
        return 2 * self.macs_per_video

    def to_dict(self) -> dict[str, Any]:
        """Every field plus ``params``, ``macs_per_video`` and the FLOPs (2 per MAC) of all, encoder and head."""
        return {
            **asdict(self),
            "params": self.params,
            "macs_per_video": self.macs_per_video,
            "flops_per_video": self.flops_per_video,
            "encoder_flops_per_video": 2 * self.encoder_macs_per_video,
            "head_flops_per_video": 2 * self.head_macs_per_video,
        }


def profile_model(
    encoder: nn.Module,
    head: nn.Module,
    *,
    num_frames: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    frame_dim: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
) -> CostProfile:
    """Count parameters and MACs and time inference of ``head(encoder(frames, mask).representation)``.

    The input is ``batch_size`` random videos of ``num_frames`` real frames each (mask all True). The modules
    are moved to ``device`` and left there; their train/eval mode is restored afterwards.

    Args:
        encoder: ``(frames (B, T, D), mask (B, T)) -> EncoderOutput`` (see ``models.encoder.VideoEncoder``).
        head: ``representation (B, E) -> probabilities (B, C)``.
        num_frames: T.
        batch_size: B.
        device: where to count and time.
        frame_dim: D; by default ``encoder.input_dim``.
        warmup: untimed passes first (allocator, kernel selection).
        repeats: timed passes.
    """
    if min(num_frames, batch_size, repeats) < 1:
        raise ConfigError(
            f"profile_model needs num_frames, batch_size and repeats >= 1, got {num_frames}, {batch_size}, {repeats}"
        )
    frame_dim = frame_dim or getattr(encoder, "input_dim", None)
    if frame_dim is None:
        raise ConfigError(f"{type(encoder).__name__} has no input_dim: pass profile_model(..., frame_dim=D)")
    device = torch.device(device)
    encoder.to(device)
    head.to(device)
    frames = torch.randn(batch_size, num_frames, frame_dim, device=device)
    mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=device)
    with eval_mode(encoder, head):
        with torch.no_grad():
            representation = encoder(frames, mask).representation
        encoder_macs = count_macs(encoder, frames, mask).total
        head_macs = count_macs(head, representation).total
        speeds = _videos_per_second(encoder, head, frames, mask, warmup=warmup, repeats=repeats)
    return CostProfile(
        num_frames=num_frames,
        batch_size=batch_size,
        device=str(device),
        encoder_params=_num_params(encoder),
        head_params=_num_params(head),
        encoder_macs_per_video=encoder_macs / batch_size,
        head_macs_per_video=head_macs / batch_size,
        videos_per_s=statistics.median(speeds),
        videos_per_s_min=min(speeds),
        videos_per_s_max=max(speeds),
        threads=torch.get_num_threads(),
    )


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _videos_per_second(
    encoder: nn.Module, head: nn.Module, frames: Tensor, mask: Tensor, *, warmup: int, repeats: int
) -> list[float]:
    """Videos/s of each of ``repeats`` timed inference passes (after ``warmup`` untimed ones); the device is
    synchronised, so queued GPU work is timed too."""

    def sync() -> None:
        if frames.device.type == "cuda":
            torch.cuda.synchronize(frames.device)

    speeds = []
    with torch.no_grad():
        for _ in range(warmup):
            head(encoder(frames, mask).representation)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            head(encoder(frames, mask).representation)
            sync()
            speeds.append(frames.shape[0] / (time.perf_counter() - start))
    return speeds
