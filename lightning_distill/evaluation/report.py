"""Readable and machine-readable reports of evaluation metrics: a rich table and JSON (no Lightning needed)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


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
