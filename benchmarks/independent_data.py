"""An independent YouTube-8M-format data set: a second source of frame-level records for checking training claims.

Written from scratch, without reading or importing ``lightning_distill`` (in particular not
``lightning_distill.data.synthetic``), its tests or its docs: the point of this file is to be a generative
process nobody tuned the project against. It writes the real YouTube-8M 2018 frame-level format, so the
project reads it through the same path as downloaded shards:

* TFRecord files of ``tf.SequenceExample``: context ``id`` (4 characters of ``[0-9A-Za-z]``) and ``labels``
  (int64 list); feature lists ``rgb`` (one bytes value of 1024 uint8 per one-second frame) and ``audio``
  (128 uint8 per frame), equally long, 20 to 300 frames.
* Quantisation as YouTube-8M: ``q = floor((clip(x, -2, 2) + 2) * 255 / 4)`` clipped to 0..255, which the
  starter code's ``x = q * 4/255 + (4/255)/2 - 2`` maps back to the bin centre.
* ``<output>/{train,validate,test}-0000i-of-0000n.tfrecord``, ``<output>/dataset.json`` (all parameters, the
  seed, counts, the class table) and ``<output>/truth-<split>.jsonl`` (per video: the annotated labels, the
  labels whose evidence was actually rendered, and the frame spans of localised evidence).

The generative process (in a whitened "latent" space, then scaled per dimension):

1. Vocabulary. Classes are grouped into verticals (topics) of Zipf-distributed popularity. Each vertical has
   one root label (like YT8M's "Game" or "Vehicle") and members with Zipf weights inside the vertical. A
   video draws a vertical, its root (p=0.75), 1+Poisson members, and sometimes a label of a second vertical:
   about 3.2 labels per video (the real 2018 validation shards average 3.1). Class ids are sorted by prior
   frequency, as in the YT8M vocabulary (id 0 is the most common; order/combo labels implied by two other
   labels' scenes make a few of them more frequent than their rank).
2. Evidence kinds (each class has one): ``global`` (weak, visible in a random 30-100% of the shots all through
   the video; roots use their vertical's direction and members share half of it, so members of a vertical
   are confusable), ``shot`` (strong, but only in 1-3 windows of 4-16 s that start at a cut), ``audio_global``
   (a long stretch of the audio only, like a music genre), ``audio_burst`` (1-3 audio events of 4-12 s only),
   ``order`` (a scene of latent concept A and, later, one of concept B; B-then-A is a hard negative with the
   same frames, so a mean of frames cannot tell them apart: a sequence model can) and ``combo`` (scenes of
   both concepts C and D, in any order; one concept, even twice, is a hard negative, so the mean of frames is
   not linearly separable, while set pooling such as NetVLAD suffices). Concepts are 12 latent scene types
   that are not labels and also appear as distractors; an ``order``/``combo`` label is true exactly when its
   rule holds in the rendered video. Visual evidence leaks weakly into the audio. Class and concept
   directions concentrate in the leading components, as class information does after PCA.
3. Video structure. Lengths: 88% between 120 and 400 s cut at 300 frames (about 30% reach 300), 12% short
   (20-119). Shots of log-normal length (mean 7 s) cut the video; shots revisit 1 + Poisson(1.5) scenes
   through a sticky chain; audio has its own, longer segments. Background = video style + scene + shot
   offsets; noise = low-rank AR(1) drift (camera motion, rho 0.9 per second) + white noise.
4. Spectrum. The stored YT8M features are PCA-whitened, so every dimension has a similar per-frame spread,
   but the leading components carry the slow, video-level structure and the tail is mostly frame noise (in
   the two real 2018 video-level shards the std of ``mean_rgb`` over videos falls from ~0.7 to ~0.4 over
   the 1024 dimensions, of ``mean_audio`` from ~0.9 to ~0.65). Here structure (background and evidence) is
   scaled by a decaying profile and the noise by a nearly flat one; the defaults give a video-mean std of
   about 0.55-0.7 falling to 0.3 (rgb) and 0.7 to 0.5 (audio), per-frame std about 1.0 falling to 0.75,
   and about 3% of rgb values at the clip limits.
5. Machine-label-like noise: each label independently has no rendered evidence (p=0.1) or its rendered
   evidence is not annotated (p=0.1); a video keeps at least one label. The test split is as noisy as
   train/validate by default, like the real YT8M splits (``--clean-test`` renders it without noise).

Every video has its own random stream (seed, split, index) and records are serialised deterministically, so
a seed gives byte-identical files whatever the number of worker processes (and the same records whatever the
number of shards).

    python benchmarks/independent_data.py --output /tmp/indep --seed 0 --train 2000 --validate 500 --test 500
    python benchmarks/independent_data.py --output /tmp/indep --check-only   # check a written set

``--check`` (after writing) or ``--check-only`` reads the records back with the ``tfrecord`` package, checks
the format, then reports GAP@20 on the test split (and mean AP per evidence kind) of models trained on train
(epoch picked on validate) that see all frames, 30 or 6 uniformly spaced frames: logistic regression and an
MLP on the mean of the frames, and a frame-level multiple-instance model (per-frame MLP, log-mean-exp over
frames; ``--no-frame-model`` skips it). Results also go to ``<output>/check.json``. About 75 s on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One BLAS thread per worker process: the work is many small matrix products, and two worker processes
# already use the two cores; set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
from scipy.signal import lfilter
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

RGB_DIM = 1024
AUDIO_DIM = 128
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "validate", "test")

# Evidence kinds. Integer codes index the per-class arrays; names go into dataset.json.
GLOBAL, SHOT, AUDIO_GLOBAL, AUDIO_BURST, ORDER, COMBO = range(6)
KIND_NAMES = ("global", "shot", "audio_global", "audio_burst", "order", "combo")


def _knob(default: Any, help_text: str) -> Any:
    """A dataclass field that becomes a ``--flag`` with this help text."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class GenConfig:
    """Every parameter of the generative process (all written to dataset.json)."""

    seed: int = _knob(0, "seed of everything (vocabulary, prototypes, every video)")
    num_classes: int = _knob(64, "size of the label vocabulary")
    num_verticals: int = _knob(8, "topics; each has one root label and at least one member")
    num_concepts: int = _knob(12, "latent scene types used by order/combo labels and as distractors")
    # Label sets.
    vertical_zipf: float = _knob(0.9, "Zipf exponent of vertical popularity")
    member_zipf: float = _knob(1.0, "Zipf exponent of member popularity inside a vertical")
    p_root: float = _knob(0.75, "probability that a video carries its vertical's root label")
    member_poisson: float = _knob(1.3, "members per video = 1 + Poisson(this), capped by the vertical size")
    p_cross: float = _knob(0.25, "probability of a label from a second vertical")
    vertical_share: float = _knob(0.5, "weight of the vertical direction in a member's visual prototype")
    # Evidence kinds of the non-root classes (normalised to sum 1; roots are always global).
    frac_global: float = _knob(0.25, "fraction of non-root classes with weak evidence all through")
    frac_shot: float = _knob(0.35, "fraction with strong evidence in a few windows of seconds")
    frac_audio: float = _knob(0.15, "fraction with audio-only evidence (half long stretches, half bursts)")
    frac_order: float = _knob(0.125, "fraction recognisable only from a scene of concept A before one of B")
    frac_combo: float = _knob(0.125, "fraction recognisable only from scenes of both concepts C and D")
    # Lengths and temporal structure.
    min_frames: int = _knob(20, "shortest video")
    max_frames: int = _knob(300, "frames kept per video (YT8M readers keep the first 300)")
    p_short: float = _knob(0.12, "fraction of short videos, uniform in [min_frames, 120)")
    long_max_s: int = _knob(400, "other videos last uniform [120, this] seconds before the cut at max_frames")
    shot_mean_s: float = _knob(7.0, "mean shot length (log-normal)")
    shot_sigma: float = _knob(0.8, "log-normal sigma of shot lengths")
    scene_poisson: float = _knob(1.5, "scenes per video = 1 + Poisson(this)")
    scene_stay: float = _knob(0.6, "probability that the next shot stays in the same scene")
    audio_segment_mean_s: float = _knob(20.0, "mean audio segment length (log-normal, independent of shots)")
    # Background and noise, latent units (per-dimension std before the spectrum scaling).
    rgb_video_std: float = _knob(0.4, "rgb: per-video style offset")
    rgb_scene_std: float = _knob(0.35, "rgb: per-scene offset")
    rgb_shot_std: float = _knob(0.45, "rgb: per-shot offset")
    rgb_drift_std: float = _knob(0.35, "rgb: AR(1) drift")
    rgb_drift_rho: float = _knob(0.9, "rgb: AR(1) coefficient per frame")
    rgb_drift_rank: int = _knob(64, "rgb: dimension of the drift process (mixed into all dims)")
    rgb_white_std: float = _knob(0.7, "rgb: white frame noise")
    rgb_knee: float = _knob(64.0, "rgb: spectrum profile (1 + d / knee) ** -decay")
    rgb_structure_decay: float = _knob(0.2, "rgb: spectrum decay of structure and evidence")
    rgb_noise_decay: float = _knob(0.05, "rgb: spectrum decay of drift and white noise")
    audio_video_std: float = _knob(0.7, "audio: per-video offset")
    audio_segment_std: float = _knob(0.55, "audio: per-segment offset")
    audio_drift_std: float = _knob(0.35, "audio: AR(1) drift")
    audio_drift_rho: float = _knob(0.8, "audio: AR(1) coefficient")
    audio_drift_rank: int = _knob(16, "audio: dimension of the drift process")
    audio_white_std: float = _knob(0.45, "audio: white frame noise")
    audio_knee: float = _knob(16.0, "audio: spectrum knee")
    audio_structure_decay: float = _knob(0.15, "audio: spectrum decay of structure and evidence")
    audio_noise_decay: float = _knob(0.05, "audio: spectrum decay of noise")
    evidence_knee: float = _knob(
        64.0, "class/concept directions (audio: knee / 2) are shaped by (1 + d / knee) ** -decay, RMS 1"
    )
    evidence_decay: float = _knob(0.4, "so that label evidence sits mostly in the leading components")
    # Evidence amplitudes (latent units per dimension) and shapes.
    global_amp: float = _knob(0.2, "global evidence (per video x log-normal, per shot x Gamma)")
    global_visible: tuple[float, float] = _knob((0.3, 1.0), "range of the fraction of shots showing it")
    shot_amp: float = _knob(1.0, "peak of shot evidence")
    shot_extra_p: float = _knob(0.5, "occurrences of shot evidence and audio bursts = 1 + Binomial(2, this)")
    shot_window: tuple[int, int] = _knob((4, 16), "frames per shot-evidence window, from a cut (inclusive range)")
    concept_amp: float = _knob(1.0, "concept scene evidence (order/combo and distractors)")
    concept_len: tuple[int, int] = _knob((4, 16), "frames of a concept scene, from a cut (inclusive range)")
    distractor_rate: float = _knob(1.5, "Poisson mean of distractor concept scenes per video")
    hard_negative_p: float = _knob(0.35, "per video: chance of a reversed order pair, and of a lone combo concept")
    audio_global_amp: float = _knob(0.4, "audio_global evidence")
    audio_burst_amp: float = _knob(2.0, "audio_burst evidence peak")
    audio_burst_window: tuple[int, int] = _knob((4, 12), "frames per audio burst (inclusive range)")
    audio_from_visual: float = _knob(0.3, "audio leak of visual evidence, relative to its visual amplitude")
    # Annotation noise.
    noise_no_evidence: float = _knob(0.1, "probability that a label's evidence is not rendered")
    noise_missing: float = _knob(0.1, "probability that rendered evidence is not annotated")
    clean_test: bool = _knob(False, "render the test split without annotation noise")


@dataclass
class Vocabulary:
    """Classes, their structure and the fixed random directions of both modalities (internal class order)."""

    vertical_of: np.ndarray  # (C,) vertical of each class
    kind: np.ndarray  # (C,) evidence kind code
    concepts: np.ndarray  # (C, 2) concept pair of order/combo classes, -1 otherwise
    roots: np.ndarray  # (V,) root class of each vertical
    members: list[np.ndarray]  # per vertical, its member classes
    member_p: list[np.ndarray]  # per vertical, the members' probabilities
    vertical_p: np.ndarray  # (V,)
    public_id: np.ndarray  # (C,) label id written to the records (ids sorted by frequency)
    rgb_proto: np.ndarray  # (C, 1024)
    audio_proto: np.ndarray  # (C, 128)
    concept_rgb: np.ndarray  # (K, 1024)
    rgb_mix: np.ndarray  # (rank, 1024) drift mixing
    audio_mix: np.ndarray  # (rank, 128)
    rgb_mean: np.ndarray  # (1024,) global offset (real features are not exactly centred)
    audio_mean: np.ndarray  # (128,)
    rgb_struct_scale: np.ndarray  # (1024,) spectrum profile of structure and evidence
    rgb_noise_scale: np.ndarray  # (1024,)
    audio_struct_scale: np.ndarray  # (128,)
    audio_noise_scale: np.ndarray  # (128,)
    order_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    combo_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def sample_label_set(self, rng: np.random.Generator, cfg: GenConfig) -> list[int]:
        """Labels of one video (internal ids): a vertical, maybe its root, members, maybe a second vertical."""
        v = int(rng.choice(len(self.vertical_p), p=self.vertical_p))
        labels: list[int] = []
        if rng.random() < cfg.p_root:
            labels.append(int(self.roots[v]))
        k = min(1 + int(rng.poisson(cfg.member_poisson)), len(self.members[v]))
        labels.extend(int(c) for c in rng.choice(self.members[v], size=k, replace=False, p=self.member_p[v]))
        if rng.random() < cfg.p_cross and len(self.vertical_p) > 1:
            p = self.vertical_p.copy()
            p[v] = 0.0
            v2 = int(rng.choice(len(p), p=p / p.sum()))
            if rng.random() < 0.5:
                labels.append(int(self.roots[v2]))
            labels.append(int(rng.choice(self.members[v2], p=self.member_p[v2])))
        return sorted(set(labels))


def _spectrum(dim: int, knee: float, decay: float) -> np.ndarray:
    """Per-dimension scale (1 + d / knee) ** -decay: slow decay, as of PCA components after whitening."""
    return ((1.0 + np.arange(dim) / knee) ** -decay).astype(np.float32)


def build_vocabulary(cfg: GenConfig) -> Vocabulary:
    """Draw the label structure, evidence kinds and all fixed directions from the seed."""
    C, V, K = cfg.num_classes, cfg.num_verticals, cfg.num_concepts
    if C < 2 * V:
        raise ValueError(f"--num-classes {C} needs at least 2 per vertical ({V} verticals)")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))

    vertical_p = (np.arange(1, V + 1) ** -cfg.vertical_zipf).astype(np.float64)
    vertical_p /= vertical_p.sum()
    # Classes 0..V-1 are the roots; every vertical gets one member, the rest go to popular verticals more often.
    roots = np.arange(V)
    member_vertical = np.concatenate([np.arange(V), rng.choice(V, size=C - 2 * V, p=vertical_p)])
    vertical_of = np.concatenate([roots, member_vertical])
    members, member_p = [], []
    for v in range(V):
        m = V + np.flatnonzero(member_vertical == v)
        m = rng.permutation(m)  # popularity rank inside the vertical is random
        p = np.arange(1, len(m) + 1) ** -cfg.member_zipf
        members.append(m)
        member_p.append(p / p.sum())

    # Evidence kinds of the non-roots, in the requested proportions (largest remainders), assigned at random.
    fracs = np.array([cfg.frac_global, cfg.frac_shot, cfg.frac_audio, cfg.frac_order, cfg.frac_combo])
    fracs = fracs / fracs.sum()
    n = C - V
    counts = np.floor(fracs * n).astype(int)
    counts[np.argsort(-(fracs * n - counts))[: n - counts.sum()]] += 1
    audio_kinds = [AUDIO_GLOBAL, AUDIO_BURST] * (counts[2] // 2 + 1)
    pool = (
        [GLOBAL] * counts[0]
        + [SHOT] * counts[1]
        + audio_kinds[: counts[2]]
        + [ORDER] * counts[3]
        + [COMBO] * counts[4]
    )
    kind = np.concatenate([np.full(V, GLOBAL), rng.permutation(np.array(pool, dtype=np.int64))])

    # Concept pairs: distinct as unordered sets, so one rule never implies another.
    concepts = np.full((C, 2), -1, dtype=np.int64)
    comp = np.flatnonzero((kind == ORDER) | (kind == COMBO))
    all_pairs = [(a, b) for a in range(K) for b in range(a + 1, K)]
    if len(comp) > len(all_pairs):
        raise ValueError(f"{len(comp)} order/combo classes need more than {K} concepts")
    for c, i in zip(comp, rng.choice(len(all_pairs), size=len(comp), replace=False)):
        a, b = all_pairs[i]
        concepts[c] = (a, b) if rng.random() < 0.5 else (b, a)

    def gauss(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    # Label evidence lives mostly in the leading components (what PCA keeps first is what separates
    # classes); the background is spread more evenly. RMS 1 keeps the amplitudes comparable across settings.
    shape_rgb = _spectrum(RGB_DIM, cfg.evidence_knee, cfg.evidence_decay)
    shape_rgb /= np.sqrt(np.mean(shape_rgb**2))
    shape_audio = _spectrum(AUDIO_DIM, cfg.evidence_knee / 2, cfg.evidence_decay)
    shape_audio /= np.sqrt(np.mean(shape_audio**2))

    vertical_rgb = gauss(V, RGB_DIM) * shape_rgb
    own_rgb = gauss(C, RGB_DIM) * shape_rgb
    s = cfg.vertical_share
    rgb_proto = (s * vertical_rgb[vertical_of] + own_rgb) / math.sqrt(1 + s * s)
    rgb_proto[roots] = vertical_rgb
    audio_proto = gauss(C, AUDIO_DIM) * shape_audio

    vocab = Vocabulary(
        vertical_of=vertical_of,
        kind=kind,
        concepts=concepts,
        roots=roots,
        members=members,
        member_p=member_p,
        vertical_p=vertical_p,
        public_id=np.arange(C),
        rgb_proto=rgb_proto.astype(np.float32),
        audio_proto=audio_proto,
        concept_rgb=gauss(K, RGB_DIM) * shape_rgb,
        rgb_mix=gauss(cfg.rgb_drift_rank, RGB_DIM) / np.float32(math.sqrt(cfg.rgb_drift_rank)),
        audio_mix=gauss(cfg.audio_drift_rank, AUDIO_DIM) / np.float32(math.sqrt(cfg.audio_drift_rank)),
        rgb_mean=gauss(RGB_DIM) * np.float32(0.015),
        audio_mean=gauss(AUDIO_DIM) * np.float32(0.02),
        rgb_struct_scale=_spectrum(RGB_DIM, cfg.rgb_knee, cfg.rgb_structure_decay),
        rgb_noise_scale=_spectrum(RGB_DIM, cfg.rgb_knee, cfg.rgb_noise_decay),
        audio_struct_scale=_spectrum(AUDIO_DIM, cfg.audio_knee, cfg.audio_structure_decay),
        audio_noise_scale=_spectrum(AUDIO_DIM, cfg.audio_knee, cfg.audio_noise_decay),
        order_classes=np.flatnonzero(kind == ORDER),
        combo_classes=np.flatnonzero(kind == COMBO),
    )
    # Public ids by decreasing prior frequency, like the YT8M vocabulary (estimated from the label prior).
    freq = np.zeros(C)
    for _ in range(20000):
        freq[vocab.sample_label_set(rng, cfg)] += 1
    order = np.argsort(-freq, kind="stable")
    vocab.public_id = np.empty(C, dtype=np.int64)
    vocab.public_id[order] = np.arange(C)
    return vocab


def make_ids(cfg: GenConfig, total: int) -> list[bytes]:
    """Unique 4-character video ids (62**4 ~ 14.8M possibilities), one per video of all splits."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2,)))
    codes = rng.choice(len(ID_ALPHABET) ** 4, size=total, replace=False)
    ids = []
    for code in codes.tolist():
        chars = []
        for _ in range(4):
            code, r = divmod(code, len(ID_ALPHABET))
            chars.append(ID_ALPHABET[r])
        ids.append("".join(chars).encode())
    return ids


def quantize(x: np.ndarray) -> np.ndarray:
    """YT8M quantisation: floor((clip(x, -2, 2) + 2) * 255/4) in 0..255 (the inverse of the starter code's)."""
    y = x * np.float32(255.0 / 4.0)
    y += np.float32(255.0 / 2.0)
    np.clip(y, 0.0, 255.0, out=y)
    return y.astype(np.uint8)  # truncation is floor for y >= 0


def dequantize(q: np.ndarray) -> np.ndarray:
    """The starter code's dequantisation: bin centre q * 4/255 + (4/255)/2 - 2."""
    return q.astype(np.float32) * np.float32(4.0 / 255.0) + np.float32(2.0 / 255.0 - 2.0)


def _ar1(rng: np.random.Generator, n: int, dim: int, rho: float) -> np.ndarray:
    """A stationary AR(1) process with unit variance, shape (n, dim)."""
    e = rng.standard_normal((n, dim))
    e[1:] *= math.sqrt(1.0 - rho * rho)
    return lfilter([1.0], [1.0, -rho], e, axis=0).astype(np.float32)


def _segments(rng: np.random.Generator, n: int, mean_s: float, sigma: float) -> np.ndarray:
    """Cut n frames into log-normal segments (each >= 1 frame); returns the segment lengths."""
    mu = math.log(mean_s) - sigma * sigma / 2  # so that the mean length is mean_s
    lengths: list[int] = []
    total = 0
    while total < n:
        length = max(1, round(rng.lognormal(mu, sigma)))
        length = min(length, n - total)
        lengths.append(length)
        total += length
    return np.array(lengths, dtype=np.int64)


def _num_frames(rng: np.random.Generator, cfg: GenConfig) -> int:
    """YT8M-like lengths: most videos 120 s or more (cut at max_frames), some short ones."""
    if rng.random() < cfg.p_short:
        n = int(rng.integers(cfg.min_frames, 120))
    else:
        n = int(rng.integers(120, cfg.long_max_s + 1))
    return max(cfg.min_frames, min(n, cfg.max_frames))


def _bump(length: int) -> np.ndarray:
    """Envelope of an object entering and leaving the frame (peak 1)."""
    return np.sin(np.pi * (np.arange(length) + 0.5) / length).astype(np.float32)


def _render(
    rng: np.random.Generator,
    structure: np.ndarray,
    amplitudes: list[np.ndarray],
    directions: list[np.ndarray],
    drift_mix: np.ndarray,
    drift_rho: float,
    drift_std: float,
    white_std: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One modality's (T, D) structure with its evidence added, and its noise (low-rank AR(1) drift + white)."""
    if amplitudes:
        structure = structure + np.stack(amplitudes, axis=1) @ np.stack(directions)
    T, D = structure.shape
    noise = _ar1(rng, T, drift_mix.shape[0], drift_rho) @ drift_mix
    noise *= np.float32(drift_std)
    noise += rng.standard_normal((T, D), dtype=np.float32) * np.float32(white_std)
    return structure, noise


@dataclass
class Video:
    """One generated video: what is written, and what was true."""

    labels: list[int]  # annotated (public ids, sorted)
    evidenced: list[int]  # labels whose evidence was rendered (public ids, sorted)
    spans: list[tuple[int, int, int]]  # localised evidence: (public label, first frame, last frame)
    rgb: np.ndarray  # (T, 1024) uint8
    audio: np.ndarray  # (T, 128) uint8


def generate_video(rng: np.random.Generator, vocab: Vocabulary, cfg: GenConfig, noisy: bool) -> Video:
    """Draw one video: labels, annotation noise, shots, scenes, evidence, background and noise; quantise."""
    T = _num_frames(rng, cfg)
    true_labels = vocab.sample_label_set(rng, cfg)

    # Annotation noise, one draw per label: annotated without evidence, or evidence without annotation.
    annotated, evidenced = set(), set()
    for c in true_labels:
        u = rng.random() if noisy else 1.0
        if u < cfg.noise_no_evidence:
            annotated.add(c)
        elif u < cfg.noise_no_evidence + cfg.noise_missing:
            evidenced.add(c)
        else:
            annotated.add(c)
            evidenced.add(c)

    shot_len = _segments(rng, T, cfg.shot_mean_s, cfg.shot_sigma)
    S = len(shot_len)
    shot_start = np.concatenate([[0], np.cumsum(shot_len)[:-1]])
    shot_of_t = np.repeat(np.arange(S), shot_len)
    # Scenes: a sticky chain over 1 + Poisson scenes (shot / reverse shot, cut-aways and back).
    n_scenes = min(S, 1 + int(rng.poisson(cfg.scene_poisson)))
    stay = rng.random(S) < cfg.scene_stay
    jumps = rng.integers(0, n_scenes, size=S)
    scene_of_shot = np.empty(S, dtype=np.int64)
    scene_of_shot[0] = jumps[0]
    for s in range(1, S):
        scene_of_shot[s] = scene_of_shot[s - 1] if stay[s] else jumps[s]

    # Visual and audio evidence as amplitude tracks (T,) times directions.
    vis_amp: list[np.ndarray] = []
    vis_dir: list[np.ndarray] = []
    aud_amp: list[np.ndarray] = []
    aud_dir: list[np.ndarray] = []
    spans: list[tuple[int, int, int]] = []
    pub = vocab.public_id

    # Concept scenes: compositional labels first, then hard negatives and distractors (one concept per shot).
    concept_of_shot = np.full(S, -1, dtype=np.int64)
    compositional = np.concatenate([vocab.order_classes, vocab.combo_classes]).tolist()

    def rules_holding() -> set[int]:
        """The order/combo classes whose rule holds in the current concept layout."""
        holding = set()
        for c in compositional:
            a_shots = np.flatnonzero(concept_of_shot == vocab.concepts[c, 0])
            b_shots = np.flatnonzero(concept_of_shot == vocab.concepts[c, 1])
            if len(a_shots) and len(b_shots) and (vocab.kind[c] == COMBO or a_shots[0] < b_shots[-1]):
                holding.add(c)
        return holding

    def place(sequence: list[int], allowed: set[int] | None = None) -> None:
        """Put the concepts in free shots, in this order; undo it if a rule outside allowed would then hold."""
        free = np.flatnonzero(concept_of_shot < 0)
        if len(free) < len(sequence):
            return
        chosen = np.sort(rng.choice(free, size=len(sequence), replace=False))
        concept_of_shot[chosen] = sequence
        if allowed is not None and not rules_holding() <= allowed:
            concept_of_shot[chosen] = -1

    for c in sorted(evidenced):
        if vocab.kind[c] == ORDER:
            place([int(vocab.concepts[c, 0]), int(vocab.concepts[c, 1])])
        elif vocab.kind[c] == COMBO:
            place([int(k) for k in rng.permutation(vocab.concepts[c])])
    # Distractors must not complete a rule by accident: that would make order/combo labels far more frequent
    # than their prior (they are label-free context, like the many shot types no label names).
    allowed = rules_holding()
    if len(vocab.order_classes) and rng.random() < cfg.hard_negative_p:
        a, b = vocab.concepts[rng.choice(vocab.order_classes)]
        place([int(b), int(a)], allowed)  # the reversed order: the same frames, not the label
    if len(vocab.combo_classes) and rng.random() < cfg.hard_negative_p:
        k = int(vocab.concepts[rng.choice(vocab.combo_classes), int(rng.integers(2))])
        place([k] * int(rng.integers(1, 3)), allowed)  # one concept, once or twice: not the combination
    for _ in range(int(rng.poisson(cfg.distractor_rate))):
        place([int(rng.integers(cfg.num_concepts))], allowed)
    # The order/combo labels are true exactly when their rule holds in the rendered shots. Two placed labels
    # can complete a third rule (concepts are shared): that label is then true too.
    holding = rules_holding()
    for c in compositional:
        if c in holding and c not in evidenced:
            evidenced.add(c)
            if c not in true_labels and not (noisy and rng.random() < cfg.noise_missing):
                annotated.add(c)  # a new true label; its annotation can go missing like any other
        elif c not in holding:
            evidenced.discard(c)  # no room for its scenes (a very short video): a label without evidence
    shots_with = [np.flatnonzero(concept_of_shot == k) for k in range(cfg.num_concepts)]
    # A concept is a kind of scene: it starts with a cut (at its shot) and may run on over the next shots.
    run_len = np.zeros(S, dtype=np.int64)
    for s in np.flatnonzero(concept_of_shot >= 0):
        start = int(shot_start[s])
        run_len[s] = min(T - start, int(rng.integers(cfg.concept_len[0], cfg.concept_len[1] + 1)))
        amp = np.zeros(T, np.float32)
        amp[start : start + run_len[s]] = cfg.concept_amp * rng.lognormal(0.0, 0.2)
        vis_amp.append(amp)
        vis_dir.append(vocab.concept_rgb[concept_of_shot[s]])
    for c in sorted(evidenced):
        if vocab.kind[c] in (ORDER, COMBO):
            a, b = vocab.concepts[c]
            first = min(int(shot_start[shots_with[a][0]]), int(shot_start[shots_with[b][0]]))
            ends = [int(shot_start[x] + run_len[x] - 1) for x in (shots_with[a][-1], shots_with[b][-1])]
            spans.append((int(pub[c]), first, max(ends)))

    for c in sorted(evidenced):
        kind = vocab.kind[c]
        amp = np.zeros(T, np.float32)
        if kind == GLOBAL:
            # Visible in a random subset of shots, with a per-shot intensity around a per-video strength.
            visible = rng.random(S) < rng.uniform(*cfg.global_visible)
            per_shot = visible * rng.gamma(4.0, 0.25, size=S) * cfg.global_amp * rng.lognormal(0.0, 0.35)
            amp = per_shot.astype(np.float32)[shot_of_t]
        elif kind == SHOT:
            # The object appears with a cut and stays for a few seconds, possibly over several shots.
            for _ in range(1 + int(rng.binomial(2, cfg.shot_extra_p))):
                start = int(shot_start[rng.integers(S)])
                width = min(T - start, int(rng.integers(cfg.shot_window[0], cfg.shot_window[1] + 1)))
                strength = cfg.shot_amp * rng.lognormal(0.0, 0.25)
                envelope = strength * (0.6 + 0.4 * _bump(width))
                amp[start : start + width] = np.maximum(amp[start : start + width], envelope)
                spans.append((int(pub[c]), start, start + width - 1))
        elif kind == AUDIO_GLOBAL:
            # A long stretch (music, commentary) covering half to all of the video.
            width = max(1, round(T * rng.uniform(0.5, 1.0)))
            start = int(rng.integers(0, T - width + 1))
            amp[start : start + width] = cfg.audio_global_amp * rng.lognormal(0.0, 0.3)
            aud_amp.append(amp)
            aud_dir.append(vocab.audio_proto[c])
            continue
        elif kind == AUDIO_BURST:
            for _ in range(1 + int(rng.binomial(2, cfg.shot_extra_p))):
                width = min(T, int(rng.integers(cfg.audio_burst_window[0], cfg.audio_burst_window[1] + 1)))
                start = int(rng.integers(0, T - width + 1))
                strength = cfg.audio_burst_amp * rng.lognormal(0.0, 0.25)
                amp[start : start + width] = np.maximum(amp[start : start + width], strength * _bump(width))
                spans.append((int(pub[c]), start, start + width - 1))
            aud_amp.append(amp)
            aud_dir.append(vocab.audio_proto[c])
            continue
        else:  # order/combo: rendered by the concept shots above
            continue
        vis_amp.append(amp)
        vis_dir.append(vocab.rgb_proto[c])
        # Visual evidence is also heard a little (an engine, a crowd), through the class's audio direction.
        aud_amp.append(amp * np.float32(cfg.audio_from_visual))
        aud_dir.append(vocab.audio_proto[c])

    # RGB: background per shot (video style + scene + shot), evidence, then drift and white noise.
    g = rng.standard_normal(RGB_DIM, dtype=np.float32) * np.float32(cfg.rgb_video_std)
    scenes = rng.standard_normal((n_scenes, RGB_DIM), dtype=np.float32) * np.float32(cfg.rgb_scene_std)
    shots = rng.standard_normal((S, RGB_DIM), dtype=np.float32) * np.float32(cfg.rgb_shot_std)
    structure = (shots + scenes[scene_of_shot] + g)[shot_of_t]
    structure, noise = _render(
        rng, structure, vis_amp, vis_dir, vocab.rgb_mix, cfg.rgb_drift_rho, cfg.rgb_drift_std, cfg.rgb_white_std
    )
    rgb = vocab.rgb_mean + structure * vocab.rgb_struct_scale + noise * vocab.rgb_noise_scale

    # Audio: its own segmentation (sound does not cut with the picture).
    seg_len = _segments(rng, T, cfg.audio_segment_mean_s, cfg.shot_sigma)
    seg_vec = rng.standard_normal((len(seg_len), AUDIO_DIM), dtype=np.float32) * np.float32(cfg.audio_segment_std)
    a_g = rng.standard_normal(AUDIO_DIM, dtype=np.float32) * np.float32(cfg.audio_video_std)
    a_structure = (seg_vec + a_g)[np.repeat(np.arange(len(seg_len)), seg_len)]
    a_structure, a_noise = _render(
        rng, a_structure, aud_amp, aud_dir, vocab.audio_mix, cfg.audio_drift_rho, cfg.audio_drift_std,
        cfg.audio_white_std,
    )
    audio = vocab.audio_mean + a_structure * vocab.audio_struct_scale + a_noise * vocab.audio_noise_scale

    if not annotated:  # YT8M train/validate videos always have a label: keep the most popular true one
        annotated.add(min(true_labels, key=lambda c: pub[c]))
    return Video(
        labels=sorted(int(pub[c]) for c in annotated),
        evidenced=sorted(int(pub[c]) for c in evidenced),
        spans=sorted(spans, key=lambda t: (t[1], t[0])),
        rgb=quantize(rgb),
        audio=quantize(audio),
    )


# --- writing ---------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(vocab: Vocabulary, cfg: GenConfig) -> None:
    _WORKER["vocab"], _WORKER["cfg"] = vocab, cfg


class StableTFRecordWriter(TFRecordWriter):
    """The tfrecord package's writer, with byte-stable SequenceExamples.

    protobuf may serialise map fields (the context's and the feature lists' keys) in a different order in
    different processes, so the same video could give different bytes with another number of workers.
    The record is built by the package as usual, then re-serialised deterministically (keys in order).
    """

    def write(
        self,
        datum: dict[str, tuple[Any, str]],
        sequence_datum: dict[str, tuple[list[Any], str]] | None = None,
    ) -> None:
        if sequence_datum is None:
            record = TFRecordWriter.serialize_tf_example(datum)
            proto: Any = example_pb2.Example.FromString(record)
        else:
            record = TFRecordWriter.serialize_tf_sequence_example(datum, sequence_datum)
            proto = example_pb2.SequenceExample.FromString(record)
        record = proto.SerializeToString(deterministic=True)
        # TFRecord framing, as TFRecordWriter.write: length, its masked CRC32C, data, its masked CRC32C.
        length_bytes = struct.pack("<Q", len(record))
        self.file.write(length_bytes)
        self.file.write(TFRecordWriter.masked_crc(length_bytes))
        self.file.write(record)
        self.file.write(TFRecordWriter.masked_crc(record))


@dataclass(frozen=True)
class ShardTask:
    """One output file: videos [start, end) of a split."""

    split: str
    split_index: int
    shard: int
    num_shards: int
    start: int
    end: int
    ids: tuple[bytes, ...]
    noisy: bool
    output: str


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Generate and write one shard; return its truth lines and summary counts."""
    vocab: Vocabulary = _WORKER["vocab"]
    cfg: GenConfig = _WORKER["cfg"]
    path = Path(task.output) / f"{task.split}-{task.shard:05d}-of-{task.num_shards:05d}.tfrecord"
    truth: list[str] = []
    frames: list[int] = []
    label_counts = np.zeros(cfg.num_classes, dtype=np.int64)
    n_labels = n_evidenced = n_both = 0
    writer = StableTFRecordWriter(str(path))
    try:
        for i, vid in zip(range(task.start, task.end), task.ids):
            # A stream per video: the output does not depend on sharding or the number of workers.
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, task.split_index, i)))
            video = generate_video(rng, vocab, cfg, task.noisy)
            writer.write(
                {"id": (vid, "byte"), "labels": (video.labels, "int")},
                {
                    "rgb": ([row.tobytes() for row in video.rgb], "byte"),
                    "audio": ([row.tobytes() for row in video.audio], "byte"),
                },
            )
            truth.append(
                json.dumps(
                    {
                        "id": vid.decode(),
                        "frames": len(video.rgb),
                        "labels": video.labels,
                        "evidenced": video.evidenced,
                        "spans": video.spans,
                    }
                )
            )
            frames.append(len(video.rgb))
            label_counts[video.labels] += 1
            n_labels += len(video.labels)
            n_evidenced += len(video.evidenced)
            n_both += len(set(video.labels) & set(video.evidenced))
    finally:
        writer.close()
    return {
        "task": task,
        "file": path.name,
        "truth": truth,
        "frames": frames,
        "label_counts": label_counts,
        "n_labels": n_labels,
        "n_evidenced": n_evidenced,
        "n_both": n_both,
    }


def _shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal ranges of n videos over the shards (empty shards are dropped)."""
    edges = [round(n * s / shards) for s in range(shards + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def write_dataset(cfg: GenConfig, output: Path, counts: dict[str, int], shards: int, workers: int) -> dict[str, Any]:
    """Write every split's shards, the truth files and dataset.json; return dataset.json's content."""
    output.mkdir(parents=True, exist_ok=True)
    # Shards of an earlier run with another --shards would otherwise be read as part of the new splits.
    for split in SPLITS:
        for stale in output.glob(f"{split}-*-of-*.tfrecord"):
            stale.unlink()
    vocab = build_vocabulary(cfg)
    all_ids = make_ids(cfg, sum(counts.values()))
    tasks: list[ShardTask] = []
    offset = 0
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        bounds = _shard_bounds(n, min(shards, n)) if n else []
        for shard, (a, b) in enumerate(bounds):
            tasks.append(
                ShardTask(
                    split=split,
                    split_index=split_index,
                    shard=shard,
                    num_shards=len(bounds),
                    start=a,
                    end=b,
                    ids=tuple(all_ids[offset + a : offset + b]),
                    noisy=not (split == "test" and cfg.clean_test),
                    output=str(output),
                )
            )
        offset += n
    # Largest shards first, so that two workers finish together.
    order = sorted(range(len(tasks)), key=lambda t: -(tasks[t].end - tasks[t].start))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers, _init_worker, (vocab, cfg)) as pool:
            done = pool.map(write_shard, [tasks[t] for t in order], chunksize=1)
    else:
        _init_worker(vocab, cfg)
        done = [write_shard(tasks[t]) for t in order]
    results = sorted(done, key=lambda r: (r["task"].split_index, r["task"].shard))

    splits: dict[str, Any] = {}
    class_counts: dict[str, list[int]] = {}
    for split in SPLITS:
        rs = [r for r in results if r["task"].split == split]
        with open(output / f"truth-{split}.jsonl", "w") as f:
            for r in rs:
                f.writelines(line + "\n" for line in r["truth"])
        frames = np.array([x for r in rs for x in r["frames"]], dtype=np.int64)
        n_labels = sum(r["n_labels"] for r in rs)
        n_evidenced = sum(r["n_evidenced"] for r in rs)
        n_both = sum(r["n_both"] for r in rs)
        class_counts[split] = sum((r["label_counts"] for r in rs), np.zeros(cfg.num_classes, np.int64)).tolist()
        splits[split] = {
            "videos": counts[split],
            "files": [r["file"] for r in rs],
            "annotation_noise": bool(rs and rs[0]["task"].noisy),
            "frames_mean": float(frames.mean()) if len(frames) else 0.0,
            "frames_at_max": float((frames == cfg.max_frames).mean()) if len(frames) else 0.0,
            "frames_below_120": float((frames < 120).mean()) if len(frames) else 0.0,
            "labels_per_video": n_labels / max(1, counts[split]),
            "annotated_labels_with_evidence": n_both / max(1, n_labels),
            "evidence_with_annotation": n_both / max(1, n_evidenced),
        }

    inv = np.argsort(vocab.public_id)  # public id -> internal class
    classes = []
    for pid in range(cfg.num_classes):
        c = int(inv[pid])
        v = int(vocab.vertical_of[c])
        is_root = bool(c == vocab.roots[v])
        kind = KIND_NAMES[int(vocab.kind[c])]
        classes.append(
            {
                "id": pid,
                "name": f"v{v}/{'root' if is_root else kind}/{pid}",
                "vertical": v,
                "root": is_root,
                "evidence": kind,
                "concepts": vocab.concepts[c].tolist() if vocab.kind[c] in (ORDER, COMBO) else None,
                "count": {s: class_counts[s][pid] for s in SPLITS},
            }
        )
    info = {
        "format": "YouTube-8M 2018 frame-level: tf.SequenceExample, context id (bytes) + labels (int64), "
        "feature_lists rgb (1024 uint8 per frame) + audio (128 uint8 per frame)",
        "generator": "benchmarks/independent_data.py (written independently of lightning_distill.data.synthetic)",
        "description": __doc__.split("The generative process")[1].split("Every video has")[0].strip(),
        "quantization": {
            "quantize": "q = clip(floor((clip(x, -2, 2) + 2) * 255 / 4), 0, 255)",
            "dequantize": "x = q * 4/255 + (4/255)/2 - 2",
        },
        "seed": cfg.seed,
        "num_classes": cfg.num_classes,
        "splits": splits,
        "shards": shards,
        "parameters": dataclasses.asdict(cfg),
        "evidence_kinds": {k: int((vocab.kind == i).sum()) for i, k in enumerate(KIND_NAMES)},
        "classes": classes,
    }
    with open(output / "dataset.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


# --- the check: the format, then how much seeing more frames helps ----------------------------------------


def read_split(output: Path, split: str) -> tuple[list[np.ndarray], list[list[int]]]:
    """Read a split back with the tfrecord package: per video its (T, 1152) uint8 frames (rgb | audio), labels."""
    from tfrecord.reader import sequence_loader

    videos: list[np.ndarray] = []
    labels: list[list[int]] = []
    for path in sorted(output.glob(f"{split}-*.tfrecord")):
        loader = sequence_loader(str(path), None, {"id": "byte", "labels": "int"}, {"rgb": "byte", "audio": "byte"})
        for context, feats in loader:
            T = len(feats["rgb"])
            rgb = np.frombuffer(b"".join(feats["rgb"]), np.uint8).reshape(T, RGB_DIM)
            audio = np.frombuffer(b"".join(feats["audio"]), np.uint8).reshape(T, AUDIO_DIM)
            videos.append(np.concatenate([rgb, audio], axis=1))
            labels.append(np.atleast_1d(context["labels"]).tolist())
    return videos, labels


def uniform_frames(num_frames: int, k: int) -> np.ndarray:
    """Uniform-k over the video's true length: frames floor((j + 0.5) * T / k), j < k (k = 0: all frames)."""
    if k <= 0:
        return np.arange(num_frames)
    return ((np.arange(k) + 0.5) * num_frames / k).astype(np.int64)


def mean_features(videos: list[np.ndarray], k: int) -> np.ndarray:
    """(N, 1152) means of the dequantised frames (all, or Uniform-k)."""
    return np.stack([dequantize(v[uniform_frames(len(v), k)]).mean(0) for v in videos])


def gap_at_k(scores: np.ndarray, labels: list[list[int]], top_k: int = 20) -> float:
    """YouTube-8M GAP: pool every video's top-k (score, hit) pairs, sort, AP over all ground-truth pairs."""
    top = np.argpartition(-scores, min(top_k, scores.shape[1]) - 1, axis=1)[:, :top_k]
    truth = np.zeros(scores.shape, dtype=bool)
    for i, ls in enumerate(labels):
        truth[i, ls] = True
    s = np.take_along_axis(scores, top, axis=1).ravel()
    hit = np.take_along_axis(truth, top, axis=1).ravel()
    hit = hit[np.argsort(-s, kind="stable")]
    precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
    return float((precision * hit).sum() / max(1, truth.sum()))


def class_ap(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Average precision of every class over all videos (NaN for classes without positives)."""
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = truth[:, c]
        if pos.any():
            hit = pos[np.argsort(-scores[:, c], kind="stable")]
            ap[c] = (np.cumsum(hit) / np.arange(1, len(hit) + 1))[hit].mean()
    return ap


def train_classifier(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], hidden: int, seed: int, epochs: int = 40
) -> np.ndarray:
    """Logistic regression (hidden=0) or a one-hidden-layer MLP; the epoch with the best validate GAP.

    Returns the test scores of that epoch.
    """
    import torch

    torch.manual_seed(seed)
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
    t = {s: torch.from_numpy((x[s] - mean) / std).float() for s in x}
    target = torch.from_numpy(y["train"]).float()
    d, c = t["train"].shape[1], target.shape[1]
    if hidden:
        model = torch.nn.Sequential(
            torch.nn.Dropout(0.2), torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.5),
            torch.nn.Linear(hidden, c),
        )  # fmt: skip
    else:
        model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(d, c))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    val_labels = [np.flatnonzero(r).tolist() for r in y["validate"]]
    best, best_scores = -1.0, None
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(target), generator=gen).split(128):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(t["train"][idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = gap_at_k(model(t["validate"]).numpy(), val_labels)
            if val > best:
                best, best_scores = val, model(t["test"]).numpy()
    assert best_scores is not None
    return best_scores


def train_frame_model(
    videos: dict[str, list[np.ndarray]], y: dict[str, np.ndarray], k: int, seed: int, epochs: int = 8
) -> np.ndarray:
    """A frame-level multiple-instance model: per-frame MLP to class logits, log-mean-exp over the frames.

    Log-mean-exp pools between mean and max, so it can use evidence that lives in a few frames, which a mean
    of frames dilutes. Sees all frames (k = 0) or Uniform-k; returns the test scores of the epoch with the
    best validate GAP.
    """
    import torch

    torch.manual_seed(seed)
    sample = np.concatenate([dequantize(v[:: max(1, len(v) // 20)]) for v in videos["train"][:500]])
    mean, std = torch.from_numpy(sample.mean(0)), torch.from_numpy(sample.std(0) + 1e-6)
    num_classes = y["train"].shape[1]
    model = torch.nn.Sequential(
        torch.nn.Linear(RGB_DIM + AUDIO_DIM, 128),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(128, num_classes),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

    def batch(vs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [v[uniform_frames(len(v), k)] for v in vs]
        x = np.zeros((len(vs), max(len(p) for p in picked), RGB_DIM + AUDIO_DIM), np.uint8)
        mask = np.zeros(x.shape[:2], bool)
        for i, p in enumerate(picked):
            x[i, : len(p)], mask[i, : len(p)] = p, True
        return (torch.from_numpy(dequantize(x)) - mean) / std, torch.from_numpy(mask)

    def forward(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = model(x).masked_fill(~mask[..., None], float("-inf"))
        return torch.logsumexp(z, dim=1) - torch.log(mask.sum(1, keepdim=True).float())

    def predict(vs: list[np.ndarray]) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return torch.cat([forward(*batch(vs[i : i + 100])) for i in range(0, len(vs), 100)]).numpy()

    target = torch.from_numpy(y["train"])
    val_labels = [np.flatnonzero(r).tolist() for r in y["validate"]]
    gen = torch.Generator().manual_seed(seed)
    best, best_scores = -1.0, None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(target), generator=gen).split(32):
            logits = forward(*batch([videos["train"][i] for i in idx.tolist()]))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = gap_at_k(predict(videos["validate"]), val_labels)
        if val > best:
            best, best_scores = val, predict(videos["test"])
    assert best_scores is not None
    return best_scores


def check_format(output: Path, num_classes: int, show: int = 3) -> None:
    """Read every record of the first train shard back and assert the YT8M frame-level layout."""
    from tfrecord.reader import sequence_loader

    path = min(output.glob("train-*.tfrecord"))
    n = 0
    for context, feats in sequence_loader(str(path), None):
        vid, labels = context["id"], np.atleast_1d(context["labels"])
        rgb, audio = feats["rgb"], feats["audio"]
        assert isinstance(vid, bytes) and len(vid) == 4, vid
        assert labels.dtype == np.int64 and len(labels) >= 1 and labels.min() >= 0 and labels.max() < num_classes
        assert 20 <= len(rgb) <= 300 and len(rgb) == len(audio)
        assert all(len(f) == RGB_DIM for f in rgb) and all(len(f) == AUDIO_DIM for f in audio)
        assert set(feats) == {"rgb", "audio"} and set(context) == {"id", "labels"}
        if n < show:
            print(
                f"  {path.name} record {n}: id={vid!r} labels={labels.tolist()} frames={len(rgb)} "
                f"rgb bytes/frame={len(rgb[0])} audio bytes/frame={len(audio[0])} "
                f"first rgb values={list(rgb[0][:6])}"
            )
        n += 1
    print(f"  {path.name}: {n} records, all with 4-byte ids, labels in range, 1024/128 bytes per frame")


def run_check(output: Path, seed: int = 0, frame_model: bool = True) -> dict[str, Any]:
    """Format check, then GAP@20 on test of classifiers that see all / 30 / 6 uniformly spaced frames.

    Logistic regression and an MLP on the mean of the frames (the difficulty target: all frames clearly
    better than 6) and, unless frame_model is False, a frame-level multiple-instance model (what reading the
    frames themselves adds). Writes the numbers to <output>/check.json.
    """
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    info = json.loads((output / "dataset.json").read_text())
    num_classes = info["num_classes"]
    print("format:")
    check_format(output, num_classes)

    t0 = time.time()
    data = {s: read_split(output, s) for s in SPLITS}
    videos = {s: data[s][0] for s in SPLITS}
    y = {}
    for s in SPLITS:
        y[s] = np.zeros((len(data[s][1]), num_classes), dtype=np.float32)
        for i, ls in enumerate(data[s][1]):
            y[s][i, ls] = 1.0
    frame_sets = ((0, "all"), (30, "30"), (6, "6"))
    means = {k: {s: mean_features(videos[s], k) for s in SPLITS} for k, _ in frame_sets}
    print(f"read all splits back and pooled them in {time.time() - t0:.1f} s")
    test_labels = data["test"][1]
    kinds = np.array([c["evidence"] if not c["root"] else "root" for c in info["classes"]])
    kind_names = ("root", *KIND_NAMES)

    results: dict[str, Any] = {}
    print("\nGAP@20 on test, then the mean AP of the classes of each evidence kind:")
    print(f"  {'model':<10} {'frames':>6} {'GAP@20':>7}  " + " ".join(f"{k:>12}" for k in kind_names))
    models = ["logreg", "mlp"] + (["frame-mil"] if frame_model else [])
    for name in models:
        for k, label in frame_sets:
            t1 = time.time()
            if name == "frame-mil":
                scores = train_frame_model(videos, y, k, seed)
            else:
                scores = train_classifier(means[k], y, 512 if name == "mlp" else 0, seed)
            gap = gap_at_k(scores, test_labels)
            ap = class_ap(scores, y["test"].astype(bool))
            per_kind = {kk: float(np.nanmean(ap[kinds == kk])) for kk in kind_names if (kinds == kk).any()}
            results[f"{name}/{label}"] = {"gap20": gap, "map_by_kind": per_kind, "seconds": time.time() - t1}
            print(
                f"  {name:<10} {label:>6} {gap:7.3f}  "
                + " ".join(f"{per_kind.get(kk, float('nan')):12.3f}" for kk in kind_names)
            )
    for name in models:
        g = {label: results[f"{name}/{label}"]["gap20"] for _, label in frame_sets}
        print(f"  {name}: all - 30 = {g['all'] - g['30']:+.3f}, all - 6 = {g['all'] - g['6']:+.3f}")
    print(f"check took {time.time() - t0:.1f} s")
    with open(output / "check.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


# --- command line ----------------------------------------------------------------------------------------


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per GenConfig field (tuples take two values, booleans are switches)."""
    group = parser.add_argument_group("generative process")
    for f in dataclasses.fields(GenConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.type in ("bool", bool):
            group.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(f.default, tuple):
            group.add_argument(flag, type=type(f.default[0]), nargs=2, default=f.default, help=help_text)
        else:
            group.add_argument(flag, type=type(f.default), default=f.default, help=help_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write an independent YouTube-8M-format (2018 frame-level) data set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, required=True, help="directory for the shards and dataset.json")
    parser.add_argument("--train", type=int, default=2000, help="train videos")
    parser.add_argument("--validate", type=int, default=500, help="validate videos")
    parser.add_argument("--test", type=int, default=500, help="test videos")
    parser.add_argument("--shards", type=int, default=4, help="files per split")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--check", action="store_true", help="after writing, check format and difficulty")
    parser.add_argument("--check-only", action="store_true", help="only check an already written --output")
    parser.add_argument("--no-frame-model", action="store_true", help="check: skip the frame-level model")
    _add_config_flags(parser)
    args = parser.parse_args(argv)

    if not args.check_only:
        cfg = GenConfig(
            **{
                f.name: tuple(getattr(args, f.name)) if isinstance(f.default, tuple) else getattr(args, f.name)
                for f in dataclasses.fields(GenConfig)
            }
        )
        counts = {"train": args.train, "validate": args.validate, "test": args.test}
        t0 = time.time()
        info = write_dataset(cfg, args.output, counts, args.shards, args.workers)
        elapsed = time.time() - t0
        total = sum(counts.values())
        print(f"wrote {total} videos to {args.output} in {elapsed:.1f} s ({args.workers} workers)")
        for split, s in info["splits"].items():
            print(
                f"  {split}: {s['videos']} videos in {len(s['files'])} files, {s['frames_mean']:.0f} frames "
                f"on average ({100 * s['frames_at_max']:.0f}% at {cfg.max_frames}, "
                f"{100 * s['frames_below_120']:.0f}% under 120), {s['labels_per_video']:.2f} labels per video, "
                f"{100 * s['annotated_labels_with_evidence']:.0f}% of labels with evidence"
            )
        print(f"  evidence kinds: {info['evidence_kinds']}")
    if args.check or args.check_only:
        run_check(args.output, seed=args.seed, frame_model=not args.no_frame_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
