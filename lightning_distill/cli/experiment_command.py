"""``vdistill experiment``: the paper's comparison (Table 1, Table 3, Figures 2-3) from one grid config.

A plain jsonargparse command: ``--config configs/experiments/quick.yaml`` loads the grid (and, if the file
sets them, ``workers``/``devices``); any value can be overridden on the command line, e.g.
``--grid.ks '[6]'`` or ``--workers 2``.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

from lightning_distill.config_files import dump_yaml
from lightning_distill.experiment.grid import Grid, check_grid
from lightning_distill.experiment.layout import ExperimentLayout
from lightning_distill.experiment.runner import run_experiment


def experiment(*, grid: Grid, output: str, workers: int = 1, devices: str | None = None) -> None:
    """Train a grid of teachers, baselines and students, and write a Table-1-style report with plots.

    Each cell is an ordinary `vdistill fit` + `vdistill test` on its own config, saved as
    OUTPUT/cells/<cell>/config.yaml; finished cells are skipped, so rerunning resumes a killed experiment.
    Writes OUTPUT/report.md, OUTPUT/report.json, PNG plots and an offline W&B run.

    Args:
        grid: what to train and compare (see configs/experiments/quick.yaml).
        output: the experiment directory (reuse it to resume).
        workers: cells trained at once on CPU, each in its own process.
        devices: GPU ids such as '0,1', or 'all': one cell per GPU at a time (instead of CPU workers).
    """
    check_grid(grid)  # before anything is written
    layout = ExperimentLayout(Path(output).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    # The settings as run, so the report can quote one command that reproduces the experiment exactly, from any
    # directory (hence the absolute configs path).
    settings = layout.root / "experiment.yaml"
    resolved = {**asdict(grid), "configs": str(Path(grid.configs).resolve())}
    settings.write_text(dump_yaml({"grid": resolved, "workers": workers, "devices": devices}))
    command = f"vdistill experiment --config {_shown(settings)} --output {_shown(layout.root)}"
    run_experiment(grid, str(layout.root), workers=workers, devices=devices, command=command)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (how a person would type it), quoted."""
    return shlex.quote(str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path))

