"""How large each loss term is for each encoder family: why L_rep's raw form needs a hand-picked weight per family
and the standardised form does not.

For every family config part (``configs/family/*.yaml``: paper sizes and tiny), a teacher encoder sees all 300
frames and an independently initialised student of the same family sees Uniform-30 of them, both untrained, on
YouTube-8M-shaped random frames: per video a random "scene" vector plus per-frame noise of the same spread, so videos
differ from each other as much as frames within a video do, quantised to uint8, dequantised and L2-normalised per
frame as the data module does. Printed per family: the representation size E and L_rep in its three forms
(``representation_loss``), next to L_CE and L_pred (class-normalised KL and per-class binary KL) of a fresh head
(the terms L_rep is added to). An untrained pair is unrelated, the situation at the start of training and of a
Parallel run: the standardised form is then about 2 by construction, while the raw form is whatever the encoder's
scale makes it.

    python benchmarks/loss_scales.py            # all six family parts, batch 16
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

from lightning_distill.config_files import load_config
from lightning_distill.data.batch import FrameView
from lightning_distill.data.normalization import FrameL2Normalization
from lightning_distill.data.samplers import AllFramesSampler, UniformSampler
from lightning_distill.data.yt8m import DEQUANT_BIAS, DEQUANT_SCALE, FEATURE_DIM, MAX_FRAMES
from lightning_distill.models.heads import LogisticHead
from lightning_distill.training.losses import classification_loss, prediction_loss, representation_loss
from lightning_distill.training.outputs import classify

FAMILIES = Path(__file__).resolve().parents[1] / "configs" / "family"
NUM_CLASSES = 3862


def build(spec: dict) -> torch.nn.Module:
    """An instance of a ``{class_path, init_args}`` config entry."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def view(frames: torch.Tensor, sampler) -> FrameView:
    """The sampler's view of (B, 300, D) float frames (all videos full length)."""
    lengths = torch.full((len(frames),), frames.shape[1])
    positions = sampler.indices(lengths)
    mask = positions >= 0
    chosen = frames.gather(1, positions.clamp(min=0)[..., None].expand(-1, -1, frames.shape[2]))
    return FrameView(chosen, mask, positions)


def measure(family: Path, batch: int, seed: int) -> dict[str, float]:
    """E and the loss terms of an untrained teacher/student pair of one family part."""
    spec = load_config(family)["model"]["init_args"]["encoder"]
    torch.manual_seed(seed)
    teacher, student = build(spec), build(spec)
    student.for_frames(30)
    teacher.eval(), student.eval()
    head = LogisticHead(teacher.output_dim, NUM_CLASSES)
    scenes = torch.randn(batch, 1, FEATURE_DIM)
    values = (scenes + torch.randn(batch, MAX_FRAMES, FEATURE_DIM)) / 2  # about [-2, 2], the quantised range
    quantized = ((values - DEQUANT_BIAS) / DEQUANT_SCALE).round().clamp(0, 255)
    frames = quantized * DEQUANT_SCALE + DEQUANT_BIAS
    frames = FrameL2Normalization()(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    labels = (torch.rand(batch, NUM_CLASSES) < 3 / NUM_CLASSES).float()
    with torch.no_grad():
        t = classify(teacher, head, view(frames, AllFramesSampler()))
        s = classify(student, head, view(frames, UniformSampler(30)))
    e_t, e_s = t.representation, s.representation
    return {
        "E": e_t.shape[1],
        "rep raw": float(representation_loss(e_t, e_s, "raw")),
        "rep standardized": float(representation_loss(e_t, e_s, "standardized")),
        "rep cosine": float(representation_loss(e_t, e_s, "cosine")),
        "ce": float(classification_loss(s.probabilities, labels)),
        "pred (kl)": float(prediction_loss(t.probabilities, s.probabilities)),
        "pred (binary_kl)": float(prediction_loss(t.probabilities, s.probabilities, "binary_kl")),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = {path.stem: measure(path, args.batch, args.seed) for path in sorted(FAMILIES.glob("*.yaml"))}
    columns = list(next(iter(rows.values())))
    print("| family | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, values in rows.items():
        cells = [f"{values['E']:,}"] + [f"{values[c]:.4g}" for c in columns[1:]]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
