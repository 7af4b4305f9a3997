"""Does the synthetic data pose the paper's question?  Teacher vs k-frame baselines vs distilled students.

Generates the default synthetic data set, reads the TFRecords back with ``tfrecord.example_pb2`` (independent
of the product's readers) and trains small masked mean+max-pool MLPs on CPU:

* the teacher on all frames;
* from-scratch k-frame models (Uniform, Random, First, Middle, Last) for each k;
* distilled Uniform-k students: L_CE + w_pred * KL(class-normalised P_T || P_S) + w_rep * ||E_T - E_S||^2
  against the frozen teacher (serial training, as in the paper).

Prints GAP@20 on the validate split as a markdown table, one column per data seed.

    python benchmarks/synthetic_signal.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tfrecord import example_pb2
from torch import Tensor, nn

from lightning_distill.data.normalization import dequantize_frames
from lightning_distill.data.synthetic import generate
from lightning_distill.data.yt8m import FEATURE_DIM, MAX_FRAMES

SELECTIONS = ("uniform", "random", "first", "middle", "last")


@dataclass
class Split:
    """Videos of one split, zero-padded to the longest.

    Attributes:
        frames: (N, T, 1152) uint8 quantised rgb+audio.
        lengths: (N,) long true lengths.
        labels: (N, C) float multi-hot.
    """

    frames: Tensor
    lengths: Tensor
    labels: Tensor


def read_split(paths: list[Path], num_classes: int) -> Split:
    """Parse frame-level SequenceExamples (framing CRCs are the product reader's job, not this study's)."""
    frames, lengths, labels = [], [], []
    for path in paths:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            example = example_pb2.SequenceExample.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            lists = example.feature_lists.feature_list
            rgb = b"".join(f.bytes_list.value[0] for f in lists["rgb"].feature)
            audio = b"".join(f.bytes_list.value[0] for f in lists["audio"].feature)
            n = len(lists["rgb"].feature)
            video = np.concatenate(
                [np.frombuffer(rgb, np.uint8).reshape(n, -1), np.frombuffer(audio, np.uint8).reshape(n, -1)], axis=1
            )[:MAX_FRAMES]
            frames.append(video)
            lengths.append(len(video))
            hot = np.zeros(num_classes, np.float32)
            hot[list(example.context.feature["labels"].int64_list.value)] = 1.0
            labels.append(hot)
    padded = np.zeros((len(frames), max(lengths), FEATURE_DIM), np.uint8)
    for i, video in enumerate(frames):
        padded[i, : len(video)] = video
    return Split(torch.from_numpy(padded), torch.tensor(lengths), torch.from_numpy(np.stack(labels)))


def select(lengths: Tensor, k: int | None, how: str, generator: torch.Generator) -> Tensor:
    """(B,) true lengths -> (B, k) frame indices of the view ``how`` (all frames when k is None, -1 = pad)."""
    if k is None:
        steps = torch.arange(int(lengths.max()))
        return torch.where(steps < lengths[:, None], steps, -1)
    last = (lengths - 1)[:, None]
    steps = torch.arange(k)
    if how == "uniform":
        return (torch.linspace(0, 1, k) * last).round().long()
    if how == "first":
        return steps.expand(len(lengths), k).minimum(last)
    if how == "last":
        return (last - k + 1 + steps).clamp(min=0)
    if how == "middle":
        return ((lengths[:, None] - k) // 2 + steps).clamp(min=0).minimum(last)
    if how == "random":
        scores = torch.rand(len(lengths), int(lengths.max()), generator=generator)
        scores[torch.arange(scores.shape[1]) >= lengths[:, None]] = 2.0  # padding drawn last
        return scores.argsort(dim=1)[:, :k].sort(dim=1).values.minimum(last)
    raise ValueError(how)


def gather(split: Split, rows: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Dequantised (B, T', 1152) frames at ``index`` (B, T') and their validity mask."""
    mask = index >= 0
    frames = dequantize_frames(split.frames[rows[:, None], index.clamp(min=0)])
    return frames * mask[..., None], mask


class PoolMLP(nn.Module):
    """Per-frame MLP, masked mean+max pooling, a representation layer and a logistic classifier.

    Args:
        num_classes: C.
        hidden: per-frame width H.
        rep: representation width R (what L_rep matches).
    """

    def __init__(self, num_classes: int, hidden: int = 64, rep: int = 128) -> None:
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(FEATURE_DIM, hidden), nn.ReLU())
        self.rep = nn.Sequential(nn.Linear(2 * hidden, rep), nn.ReLU(), nn.Dropout(0.3))
        self.classifier = nn.Linear(rep, num_classes)

    def forward(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 1152), (B, T) bool -> representation (B, R), logits (B, C)."""
        h = self.frame(frames)
        m = mask[..., None]
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
        peak = h.masked_fill(~m, float("-inf")).amax(1)
        e = self.rep(torch.cat([mean, peak], dim=1))
        return e, self.classifier(e)


def batches(split: Split, batch_size: int, generator: torch.Generator, shuffle: bool) -> list[Tensor]:
    """Row batches of similar length (little padding for the all-frames view), in random order if shuffle."""
    order = split.lengths.argsort()
    chunks = list(order.split(batch_size))
    if shuffle:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]
    return chunks


def train(
    split: Split,
    k: int | None,
    how: str,
    args: argparse.Namespace,
    teacher: tuple[Tensor, Tensor] | None = None,
) -> PoolMLP:
    """Train one model on the view (k, how); with ``teacher`` = (E_T, logits_T) per train video, distil."""
    torch.manual_seed(args.model_seed)
    generator = torch.Generator().manual_seed(args.model_seed)
    model = PoolMLP(split.labels.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    epochs = args.teacher_epochs if k is None else args.epochs
    for _ in range(epochs):
        model.train()
        for rows in batches(split, args.batch_size, generator, shuffle=True):
            frames, mask = gather(split, rows, select(split.lengths[rows], k, how, generator))
            e, logits = model(frames, mask)
            loss = bce(logits, split.labels[rows]).sum(1).mean()
            if teacher is not None:
                e_t, logits_t = teacher[0][rows], teacher[1][rows]
                p_t = _class_normalised(logits_t)
                kl = (p_t * (p_t.log() - _class_normalised(logits).log())).sum(1).mean()
                loss = loss + args.w_pred * kl + args.w_rep * (e - e_t).pow(2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _class_normalised(logits: Tensor) -> Tensor:
    """Sigmoid probabilities scaled to sum to 1 over classes (the authors' L_pred distribution)."""
    p = torch.sigmoid(logits)
    return p / p.sum(1, keepdim=True)


@torch.no_grad()
def predict(model: PoolMLP, split: Split, k: int | None, how: str, batch_size: int) -> tuple[Tensor, Tensor]:
    """Representations (N, R) and logits (N, C) in split order; Random views use a fixed seed."""
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    reps = torch.zeros(len(split.lengths), model.classifier.in_features)
    logits = torch.zeros(split.labels.shape)
    for rows in batches(split, batch_size, generator, shuffle=False):
        reps[rows], logits[rows] = model(*gather(split, rows, select(split.lengths[rows], k, how, generator)))
    return reps, logits


def gap_at_20(scores: Tensor, labels: Tensor, top: int = 20) -> float:
    """YouTube-8M GAP: pool every video's top-20 (score, hit), sort, sum precision at hits / all positives."""
    top_scores, top_classes = scores.topk(min(top, scores.shape[1]), dim=1)
    hits = labels.gather(1, top_classes).flatten()
    order = top_scores.flatten().argsort(descending=True)
    hits = hits[order]
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / labels.sum())


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Generate data with ``seed``, train every model, return GAP@20 on validate by row name."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        paths = generate(tmp, seed=seed, train_videos=args.train_videos, num_classes=args.num_classes)
        train_split = read_split(paths["train"], args.num_classes)
        val = read_split(paths["validate"], args.num_classes)
        print(f"seed {seed}: generated and read in {time.time() - start:.0f} s", flush=True)

    results: dict[str, float] = {}
    start = time.time()
    teacher = train(train_split, None, "all", args)
    results["Teacher (all frames)"] = gap_at_20(predict(teacher, val, None, "all", args.batch_size)[1], val.labels)
    targets = predict(teacher, train_split, None, "all", args.batch_size)
    print(f"  teacher {results['Teacher (all frames)']:.3f} in {time.time() - start:.0f} s", flush=True)
    for k in args.ks:
        for how in SELECTIONS:
            model = train(train_split, k, how, args)
            scores = predict(model, val, k, how, args.batch_size)[1]
            results[f"k={k} {how.capitalize()}-k"] = gap_at_20(scores, val.labels)
        student = train(train_split, k, "uniform", args, teacher=targets)
        results[f"k={k} Student (Uniform, distilled)"] = gap_at_20(
            predict(student, val, k, "uniform", args.batch_size)[1], val.labels
        )
        print("  " + ", ".join(f"{n} {v:.3f}" for n, v in results.items() if n.startswith(f"k={k} ")), flush=True)
    print(f"  seed {seed} trained in {time.time() - start:.0f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ks", type=int, nargs="+", default=[6, 30])
    parser.add_argument("--train-videos", type=int, default=2000)
    parser.add_argument("--num-classes", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--w-pred", type=float, default=10.0)
    parser.add_argument("--w-rep", type=float, default=0.01)
    parser.add_argument("--model-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    table = {seed: run_seed(seed, args) for seed in args.seeds}
    rows = list(table[args.seeds[0]])
    print("\n| model | " + " | ".join(f"GAP@20 seed {s}" for s in args.seeds) + " |")
    print("|---|" + "---:|" * len(args.seeds))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{table[s][row]:.3f}" for s in args.seeds) + " |")


if __name__ == "__main__":
    main()
