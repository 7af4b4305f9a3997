"""The report's figures as PNG files: GAP vs k, the cost/quality frontier, training curves (the paper's
Figure 2) and the teacher/student t-SNE (Figure 3).

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no global state or GUI backend is
involved and plotting is safe in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Baselines dashed, teacher-student variants solid, so the two halves of Table 1 read apart in one plot.
_BASELINE_STYLE = "--"
_STUDENT_STYLE = "-"


@dataclass
class Series:
    """One method's points.

    Attributes:
        label: legend entry (the table's row label).
        x: abscissae (k, or GFLOPs per video).
        y: GAP at each abscissa.
        baseline: True for a from-scratch baseline (drawn dashed).
        std: GAP's standard deviation over seeds at each abscissa (drawn as error bars); None for one seed.
    """

    label: str
    x: list[float]
    y: list[float]
    baseline: bool
    std: list[float] | None = None


@dataclass
class Ceiling:
    """The teacher's GAP, a line over every k, with its standard deviation over seeds (a band) if known."""

    gap: float
    std: float | None = None


@dataclass
class CurvePanel:
    """One panel of the training-curves figure: GAP per epoch of several models.

    Attributes:
        title: the loss set, e.g. ``L_rep, L_pred, L_CE (k=30)``.
        curves: legend entry -> (epochs, GAP per epoch).
        constants: legend entry -> a horizontal line (the serial teacher, trained before the student).
    """

    title: str
    curves: dict[str, tuple[list[int], list[float]]]
    constants: dict[str, float]


def plot_gap_vs_k(
    series: Sequence[Series],
    teacher: Ceiling | None,
    path: Path,
    x_label: str = "frames seen by the model (k)",
    title: str = "GAP vs k",
) -> Path:
    """Test GAP against the student's frame count k (or the quantity ``x_label`` names), one line per method, the
    teacher as a ceiling."""
    fig, ax = _methods_figure(series)
    if teacher is not None:
        ax.axhline(teacher.gap, color="black", linestyle=":", label="Teacher (all frames)")
        if teacher.std is not None:
            ax.axhspan(teacher.gap - teacher.std, teacher.gap + teacher.std, color="black", alpha=0.08, lw=0)
    ax.set_xlabel(x_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)
    return path


def plot_cost_frontier(
    series: Sequence[Series], teacher: tuple[float, float] | None, path: Path
) -> Path:
    """Test GAP against inference GFLOPs per video (log scale): the cost/quality frontier.

    Args:
        series: per method, GFLOPs (x) and GAP (y) at each k.
        teacher: the teacher's (GFLOPs, GAP), if both are known.
        path: PNG to write.
    """
    fig, ax = _methods_figure(series)
    if teacher is not None:
        ax.plot([teacher[0]], [teacher[1]], marker="*", markersize=14, color="black", linestyle="", label="Teacher")
    ax.set_xscale("log")
    ax.set_xlabel("inference GFLOPs per video (log scale)")
    ax.set_title("Cost vs quality")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)
    return path


def _methods_figure(series: Sequence[Series]) -> tuple[Figure, Axes]:
    """A figure with test GAP (y) of every method's series, baselines dashed, teacher-student variants solid,
    each point with an error bar of one standard deviation over seeds where there are several."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for s in series:
        style = _BASELINE_STYLE if s.baseline else _STUDENT_STYLE
        ax.errorbar(s.x, s.y, yerr=s.std, linestyle=style, marker="o", capsize=3, label=s.label)
    ax.set_ylabel("test GAP" + (" (mean ± std over seeds)" if any(s.std for s in series) else ""))
    return fig, ax


def plot_training_curves(panels: Sequence[CurvePanel], path: Path) -> Path:
    """Validation GAP over training epochs, one panel per loss set (the paper's Figure 2)."""
    fig = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for label, (epochs, values) in panel.curves.items():
            ax.plot(epochs, values, marker="o", label=label)
        for label, value in panel.constants.items():
            ax.axhline(value, linestyle="--", color="black", label=label)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation GAP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)
    return path


def plot_tsne(
    teacher_points: np.ndarray,
    student_points: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Teacher and student embeddings of the same videos (the paper's Figure 3).

    Args:
        teacher_points: (N, 2) t-SNE coordinates of the teacher's representations.
        student_points: (N, 2) coordinates of the student's representations of the same N videos.
        classes: (N,) index into ``class_names`` of each video's class.
        class_names: legend names of the classes (at most 10).
        title: figure title (which student).
        path: PNG to write.
    """
    # tab20 holds ten dark/light pairs of one hue: dark = teacher, light = student, one hue per class.
    palette = colormaps["tab20"].colors
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        chosen = classes == c
        ax.scatter(*teacher_points[chosen].T, s=14, color=palette[2 * c], label=f"{name}-t")
        ax.scatter(*student_points[chosen].T, s=14, color=palette[2 * c + 1], label=f"{name}-s")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, ncols=2, loc="best")
    fig.savefig(path, dpi=120)
    return path
