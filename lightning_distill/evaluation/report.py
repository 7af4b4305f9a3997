"""Readable and machine-readable reports of evaluation metrics: a rich table, JSON, and a W&B table."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger
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


def write_metrics_json(metrics: dict[str, float], path: str | Path, *, logger: Logger | None = None) -> Path:
    """Write metrics as JSON (creating the directory) and, for a W&B logger, log them as a W&B Table too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    if isinstance(logger, WandbLogger):
        rows = [[name, value] for name, value in sorted(metrics.items())]
        logger.log_table(key=f"{path.stem}_table", columns=["metric", "value"], data=rows)
    return path
