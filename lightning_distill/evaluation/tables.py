"""Readable and machine-readable reports: evaluation metrics (a rich table, JSON) and a model's cost, in human units
(no Lightning needed)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_distill.evaluation.flops import CostProfile


def print_metrics(metrics: dict[str, float], *, title: str) -> None:
    """Print ``{"test/gap": 0.81, ...}`` as a two-column table, keys sorted."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.4f}")
    Console().print(table)


def write_metrics_json(metrics: dict[str, float], path: str | Path) -> Path:
    """Write metrics as JSON, keys sorted (creating the directory); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    return path


def human(count: float, unit: str = "") -> str:
    """``125795884`` -> ``125.8 M``; with ``unit`` ``"FLOPs"``: ``11.4 GFLOPs`` (SI prefixes)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= factor:
            return f"{count / factor:.1f} {prefix}{unit}".rstrip() if unit else f"{count / factor:.1f} {prefix}"
    return f"{count:,.0f} {unit}".rstrip()


def print_cost(cost: CostProfile, title: str) -> None:
    """A model's cost as a table in human units: parameters, MACs and FLOPs per video, measured videos/s."""
    table = Table(title=title, show_header=True)
    for column in ("", "encoder", "head", "total"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("parameters", human(cost.encoder_params), human(cost.head_params), human(cost.params))
    table.add_row("MACs per video", human(cost.encoder_macs_per_video, "MACs"), human(cost.head_macs_per_video, "MACs"),
                  human(cost.macs_per_video, "MACs"))
    table.add_row("FLOPs per video (2 per MAC)", human(2 * cost.encoder_macs_per_video, "FLOPs"),
                  human(2 * cost.head_macs_per_video, "FLOPs"), human(cost.flops_per_video, "FLOPs"))
    Console().print(table)
    Console().print(
        f"{cost.num_frames} frames per video; measured on {cost.device}, {cost.threads} thread(s), batches of "
        f"{cost.batch_size}: {cost.videos_per_s:,.0f} videos/s (median; {cost.videos_per_s_min:,.0f} to "
        f"{cost.videos_per_s_max:,.0f} over the timed repeats)",
        highlight=False,
    )
