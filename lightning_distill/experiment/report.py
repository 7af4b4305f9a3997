"""The experiment report: a Table-1-shaped GAP/mAP table, the teacher skyline, the cost table and the plots,
written as report.md, report.json and PNGs, and logged to an offline W&B run.

Every number comes from a finished cell's files (``done.json`` present): test metrics from its
``test_metrics.json``, curves from its CSV log, costs from ``vdistill profile`` output. A table entry whose
cells have not all finished is shown as "—" and its cells are listed as missing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import wandb

from lightning_distill.experiment.grid import (
    SELECTIONS,
    TEACHER_METHOD,
    Cell,
    Grid,
    other_teacher_families,
    row_labels,
    teacher_method,
)
from lightning_distill.atomic_files import write_json_atomic
from lightning_distill.experiment.layout import ExperimentLayout, read_json
from lightning_distill.experiment.plots import (
    Ceiling,
    CurvePanel,
    Series,
    plot_cost_frontier,
    plot_gap_vs_k,
    plot_training_curves,
)
from lightning_distill.training.student import ANY_K_METRIC

FRAMES_READ_LABEL = "frames read per video (k, plus the features read to choose them, in 1152-value frames)"

# The table's two numbers per (method, k), as in the paper's Table 1; mAP is the all-classes average the
# paper's (2017/2018) evaluation code computed.
TABLE_METRICS = ("gap", "map_all_classes")
# What choosing frames per video cost a cell beyond its k frames (logged by modules whose sampler scores frames).
SELECTION_COSTS = ("selection_frames", "selection_gflops")
_MISSING = "—"


@dataclass
class CostEntry:
    """Inference cost of one model, from ``vdistill profile``.

    Attributes:
        model: ``Teacher`` or ``k=<k>``.
        frames: frames per video the model was profiled at.
        profile: the profile JSON (``params``, ``macs_per_video``, ``flops_per_video``, ``videos_per_s``, ...).
    """

    model: str
    frames: int
    profile: dict[str, Any]


def finished_metrics(layout: ExperimentLayout, cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Test metrics of every finished cell, by cell name (unfinished cells are absent)."""
    return {
        cell.name: read_json(layout.test_metrics(cell.name))
        for cell in cells
        if layout.done(cell.name).is_file()
    }


def model_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The cell's model's test metrics without their prefix, e.g. ``{"gap": .., "map_all_classes": ..}``.

    Most cells log one model (``test/gap``); a Parallel cell logs its student and its teacher
    (``test/student/gap``, ``test/teacher/gap``), and the table is about the student.
    """
    prefix = "test/student/" if any(key.startswith("test/student/") for key in metrics) else "test/"
    names = {key: key[len(prefix) :] for key in metrics if key.startswith(prefix)}
    return {name: metrics[key] for key, name in names.items() if "/" not in name}


def aggregate(names: list[str], metrics: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """The table entry of cells that differ only by seed: mean (and std over >= 2 seeds) of each table metric.

    Returns None unless every cell has finished, so a shown number never averages a partial set of seeds.
    """
    if not names or any(name not in metrics for name in names):
        return None
    per_cell = [model_metrics(metrics[name]) for name in names]
    entry: dict[str, Any] = {"cells": names}
    for metric in TABLE_METRICS:
        values = [m[metric] for m in per_cell]
        entry[metric] = fmean(values)
        if len(values) > 1:
            entry[f"{metric}_std"] = stdev(values)
    for cost in SELECTION_COSTS:
        if all(cost in m for m in per_cell):
            entry[cost] = fmean(m[cost] for m in per_cell)
    return entry


def build_report(
    layout: ExperimentLayout,
    grid: Grid,
    cells: list[Cell],
    metrics: dict[str, dict[str, float]],
    costs: list[CostEntry],
) -> dict[str, Any]:
    """The report as a JSON-ready dict: table rows by method and k, the teacher, costs and missing cells."""
    by_method: dict[tuple[str, int | None], list[str]] = {}
    kind: dict[str, str] = {}
    for cell in cells:
        by_method.setdefault((cell.method, cell.k), []).append(cell.name)
        kind[cell.method] = "baseline" if cell.role == "baseline" else "teacher-student"
    rows = [
        {
            "method": method,
            "kind": kind[method],
            "results": {str(k): aggregate(by_method[(method, k)], metrics) for k in grid.ks},
        }
        for method in row_labels(grid)
    ]
    return {
        "family": grid.family,
        "ks": grid.ks,
        "seeds": grid.seeds,
        "metrics": list(TABLE_METRICS),
        "teacher": aggregate(by_method[(TEACHER_METHOD, None)], metrics),
        "other_teachers": {
            teacher_method(family): aggregate(by_method[(teacher_method(family), None)], metrics)
            for family in other_teacher_families(grid)
        },
        "frame_scorers": {
            method: aggregate(by_method[(method, None)], metrics)
            for method in dict.fromkeys(cell.method for cell in cells if cell.role in SELECTIONS.values())
        },
        "rows": rows,
        "cost": [
            {"model": c.model, "frames": c.frames, **c.profile, "gflops_per_video": c.profile["flops_per_video"] / 1e9}
            for c in costs
        ],
        "missing": [cell.name for cell in cells if cell.name not in metrics],
        "epochs": {cell.name: _epochs(layout, cell) for cell in cells if cell.name in metrics},
    }


def _epochs(layout: ExperimentLayout, cell: Cell) -> dict[str, int] | None:
    """The epoch whose checkpoint was tested (best validation GAP, the student's in a Parallel cell; for an any-k
    student the best mean over the grid's ks, see ``cell_configs``) and the epochs trained, from the cell's CSV
    log."""
    any_k = cell.variant is not None and bool(cell.variant.train_ks)
    path = layout.curves(cell.name)
    epochs, values = read_curve(path, ANY_K_METRIC) if any_k else _side_curve(path, "student")
    if not epochs:
        return None
    return {"best": epochs[max(range(len(values)), key=values.__getitem__)], "trained": max(epochs)}


def render_markdown(report: dict[str, Any], figures: dict[str, str], command: str) -> str:
    """report.md: the command, Table 1 (GAP and mAP per k), the skyline, the cost table, figures, missing cells."""
    ks = report["ks"]
    seeds = report["seeds"]
    lines = [
        f"# Experiment report: {report['family']}",
        "",
        f"Produced by `{command}`. Test-split metrics; "
        + (f"mean ± std over seeds {seeds}." if len(seeds) > 1 else f"seed {seeds[0]}.")
        + " mAP is averaged over all classes (the paper's evaluation code).",
        "",
        "## Table 1: GAP and mAP with k frames",
        "",
        "| Model | " + " | ".join(f"k={k} GAP | k={k} mAP" for k in ks) + " |",
        "|---|" + "---:|---:|" * len(ks),
    ]
    headings = {"baseline": "Baselines (k frames, no distillation)", "teacher-student": "Teacher-student"}
    for kind, heading in headings.items():
        rows = [row for row in report["rows"] if row["kind"] == kind]
        if rows:
            lines.append(f"| **{heading}** |" + " |" * (2 * len(ks)))
        for row in rows:
            cells = [_format(row["results"][str(k)], metric) for k in ks for metric in TABLE_METRICS]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    teacher = report["teacher"]
    lines += [
        "",
        f"Teacher skyline (all frames): GAP {_format(teacher, 'gap')}, mAP {_format(teacher, 'map_all_classes')}.",
        "",
    ]
    for method, other in report.get("other_teachers", {}).items():
        lines += [f"{method}, all frames: GAP {_format(other, 'gap')}, mAP {_format(other, 'map_all_classes')}.", ""]
    for method, scorer in report.get("frame_scorers", {}).items():
        lines += [f"{method}, every frame, as a classifier: GAP {_format(scorer, 'gap')}.", ""]
    lines += _selection_lines(report)
    if report["cost"]:
        lines += _cost_lines(report["cost"])
    if any(report["epochs"].values()):
        lines += _epoch_lines(report["epochs"])
    for title, name in figures.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if report["missing"]:
        lines += ["## Missing cells", "", "Not finished, shown as —: " + ", ".join(report["missing"]) + ".", ""]
    return "\n".join(lines)


def _epoch_lines(epochs: dict[str, dict[str, int] | None]) -> list[str]:
    """Each finished cell's tested (best) epoch out of the epochs it trained."""
    shown = [f"{name} {e['best']}/{e['trained']}" for name, e in epochs.items() if e]
    return ["## Epochs", "", "Tested epoch / epochs trained (best validation GAP): " + ", ".join(shown) + ".", ""]


def table_section(markdown: str) -> str:
    """The Table 1 part of report.md (heading to the teacher skyline), for printing at the end of a run."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Table 1"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Teacher skyline"))
    return "\n".join(lines[start : end + 1])


def _format(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return _MISSING
    if f"{metric}_std" in entry:
        return f"{entry[metric]:.3f} ± {entry[f'{metric}_std']:.3f}"
    return f"{entry[metric]:.3f}"


def _cost_lines(cost: list[dict[str, Any]]) -> list[str]:
    """The cost table (the paper's Table 3/6): FLOPs, MACs and measured throughput, teacher vs each k."""
    teacher_flops = next((c["flops_per_video"] for c in cost if c["model"] == TEACHER_METHOD), None)
    lines = [
        "## Inference cost per video",
        "",
        "| Model | frames | parameters | GFLOPs | GMACs | FLOPs vs teacher | videos/s (measured) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cost:
        share = f"{100 * c['flops_per_video'] / teacher_flops:.1f}%" if teacher_flops else _MISSING
        lines.append(
            f"| {c['model']} | {c['frames']} | {c['params']:,} | {c['gflops_per_video']:.4f} | "
            f"{c['macs_per_video'] / 1e9:.4f} | {share} | {c['videos_per_s']:,.1f} |"
        )
    return lines + [""]


def _network_gflops(report: dict[str, Any]) -> dict[int, float]:
    """k -> GFLOPs per video of the k-frame network, from the cost table."""
    return {c["frames"]: c["gflops_per_video"] for c in report["cost"] if c["model"] != TEACHER_METHOD}


def _selection_entries(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, k, entry) of every finished table entry whose frames were chosen per video."""
    return [
        (row["method"], k, entry)
        for row in report["rows"]
        for k, entry in row["results"].items()
        if entry and "selection_frames" in entry
    ]


def _selection_lines(report: dict[str, Any]) -> list[str]:
    """For rows whose frames are chosen per video: what a video cost them, the choice included, beside GAP."""
    chosen = _selection_entries(report)
    if not chosen:
        return []
    gflops = _network_gflops(report)
    lines = [
        "## Frames chosen per video: what the choice costs",
        "",
        "Frames read: the k chosen frames plus the features read to choose them (the skimmed features of every other "
        "frame), in frames of 1152 features. GFLOPs: the k-frame network (cost table) plus the choice.",
        "",
        "| Model | k | frames read | GFLOPs per video | GAP |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, k, entry in chosen:
        network = gflops.get(int(k))
        total = _MISSING if network is None else f"{network + entry['selection_gflops']:.4f}"
        lines.append(
            f"| {method} | {k} | {int(k) + entry['selection_frames']:.1f} | {total} | {_format(entry, 'gap')} |"
        )
    return lines + [""]


def method_series(report: dict[str, Any], x_of_k: dict[int, float], cost: str | None = None) -> list[Series]:
    """Per table row, GAP (and its std over seeds, when averaged) against ``x_of_k[k]`` at the ks whose entry has
    finished (and whose x is known); ``cost`` names a selection cost (``SELECTION_COSTS``) added to x where a row
    logs it."""
    series = []
    for row in report["rows"]:
        entries = {k: row["results"][str(k)] for k in report["ks"]}
        points = [
            (x_of_k[k] + (entry.get(cost, 0.0) if cost else 0.0), entry)
            for k, entry in entries.items()
            if entry and k in x_of_k
        ]
        if points:
            stds = [entry.get("gap_std") for _, entry in points]
            series.append(
                Series(
                    row["method"],
                    [x for x, _ in points],
                    [entry["gap"] for _, entry in points],
                    baseline=row["kind"] == "baseline",
                    std=None if None in stds else stds,
                )
            )
    return series


def read_curve(path: Path, key: str) -> tuple[list[int], list[float]]:
    """(epochs trained, value) of ``key`` in a CSVLogger ``metrics.csv``; empty if the key was never logged."""
    if not path.is_file():
        return [], []
    epochs, values = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                epochs.append(int(float(row["epoch"])) + 1)
                values.append(float(row[key]))
    return epochs, values


def curve_panels(
    layout: ExperimentLayout, grid: Grid, cells: list[Cell], metrics: dict[str, dict[str, float]]
) -> list[CurvePanel]:
    """Figure 2's panels: per loss set, validation GAP per epoch of the parallel teacher and student and of the
    serial student, with the serial (independently trained) teacher as a constant line.

    Uses the first seed and the largest k whose cells of that loss set have finished.
    """
    seed = grid.seeds[0]
    done = {cell.name: cell for cell in cells if cell.name in metrics and cell.seed == seed}
    teacher = next((c for c in done.values() if c.role == "teacher"), None)
    teacher_gap = read_curve(layout.curves(teacher.name), "val/gap")[1] if teacher else []
    panels = []
    for losses in dict.fromkeys(tuple(v.losses) for v in grid.students):
        for k in sorted(grid.ks, reverse=True):
            chosen = [c for c in done.values() if c.k == k and c.variant and tuple(c.variant.losses) == losses]
            if not chosen:
                continue
            curves = {}
            for cell in chosen:
                mode = cell.role.capitalize() + (f" ({cell.variant.tag})" if cell.variant.tag else "")
                sides = ("teacher", "student") if cell.role == "parallel" else ("student",)
                for side in sides:
                    epochs, values = _side_curve(layout.curves(cell.name), side)
                    if epochs:
                        curves[f"{mode} {side}"] = (epochs, values)
            # Serial students distil from the teacher checkpoint, its best epoch when its config monitors val/gap.
            constants = {"Serial teacher": max(teacher_gap)} if teacher_gap else {}
            if curves:
                symbols = chosen[0].variant.label.split(" ", 1)[1]
                panels.append(CurvePanel(f"{symbols} (k={k})", curves, constants))
            break
    return panels


def _side_curve(path: Path, side: str) -> tuple[list[int], list[float]]:
    """Validation GAP per epoch of one model of a cell: ``val/<side>/gap`` when logged per side, else ``val/gap``."""
    epochs, values = read_curve(path, f"val/{side}/gap")
    return (epochs, values) if epochs else read_curve(path, "val/gap")


def write_report(
    layout: ExperimentLayout,
    grid: Grid,
    cells: list[Cell],
    costs: list[CostEntry],
    command: str,
    tsne_figure: Path | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md and the PNGs into the experiment directory; return the report dict.

    Args:
        layout: the experiment's files.
        grid: the grid the cells came from.
        cells: all cells of the grid, finished or not.
        costs: profiled inference costs (teacher and each k).
        command: the command that produced the experiment (quoted in report.md).
        tsne_figure: the t-SNE PNG already written into the experiment directory, if any.
    """
    metrics = finished_metrics(layout, cells)
    report = build_report(layout, grid, cells, metrics, costs)
    figures = _draw_figures(layout, grid, cells, metrics, report)
    if tsne_figure is not None:
        figures["Teacher and student representations (t-SNE)"] = tsne_figure.name
    report["figures"] = figures
    write_json_atomic(layout.report_json, report)
    layout.report_md.write_text(render_markdown(report, figures, command))
    return report


def _draw_figures(
    layout: ExperimentLayout,
    grid: Grid,
    cells: list[Cell],
    metrics: dict[str, dict[str, float]],
    report: dict[str, Any],
) -> dict[str, str]:
    """Draw every figure the finished cells allow; returns title -> PNG file name (relative to the report)."""
    figures: dict[str, str] = {}
    teacher = Ceiling(report["teacher"]["gap"], report["teacher"].get("gap_std")) if report["teacher"] else None
    by_k = method_series(report, {k: float(k) for k in report["ks"]})
    if by_k:
        plot_gap_vs_k(by_k, teacher, layout.root / "gap_vs_k.png")
        figures["GAP vs k"] = "gap_vs_k.png"
    if _selection_entries(report):
        read = method_series(report, {k: float(k) for k in report["ks"]}, "selection_frames")
        plot_gap_vs_k(read, teacher, layout.root / "gap_vs_frames_read.png", FRAMES_READ_LABEL, "GAP vs frames read")
        figures["GAP vs frames read (the choice of frames included)"] = "gap_vs_frames_read.png"
    frontier = method_series(report, _network_gflops(report), "selection_gflops")
    if frontier:
        teacher_cost = next((c["gflops_per_video"] for c in report["cost"] if c["model"] == TEACHER_METHOD), None)
        teacher_point = (teacher_cost, teacher.gap) if teacher_cost is not None and teacher is not None else None
        plot_cost_frontier(frontier, teacher_point, layout.root / "gap_vs_gflops.png")
        figures["GAP vs inference cost"] = "gap_vs_gflops.png"
    panels = curve_panels(layout, grid, cells, metrics)
    if panels:
        plot_training_curves(panels, layout.root / "training_curves.png")
        figures["Teacher and student validation GAP during training (Parallel vs Serial)"] = "training_curves.png"
    return figures


def log_to_wandb(layout: ExperimentLayout, report: dict[str, Any], name: str) -> Path:
    """Log the table, the cost table and every figure to an offline W&B run under the experiment directory.

    Returns the run's directory; ``wandb sync`` it to upload.
    """
    columns = ["method", "k", *TABLE_METRICS]
    table = [
        [row["method"], int(k), *(entry[m] for m in TABLE_METRICS)]
        for row in report["rows"]
        for k, entry in row["results"].items()
        if entry is not None
    ]
    if report["teacher"] is not None:
        table.append([TEACHER_METHOD, None, *(report["teacher"][m] for m in TABLE_METRICS)])
    cost_columns = ["model", "frames", "params", "gflops_per_video", "macs_per_video", "videos_per_s"]
    run = wandb.init(
        mode="offline",
        dir=str(layout.root),
        project="vdistill",
        name=name,
        job_type="experiment",
        config={"family": report["family"], "ks": report["ks"], "seeds": report["seeds"]},
    )
    run.log(
        {
            "table1": wandb.Table(columns=columns, data=table),
            "cost": wandb.Table(columns=cost_columns, data=[[c[key] for key in cost_columns] for c in report["cost"]]),
            **{f"figures/{Path(f).stem}": wandb.Image(str(layout.root / f)) for f in report["figures"].values()},
        }
    )
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
