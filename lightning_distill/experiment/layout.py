"""Where an experiment's files live under its output directory; the runner writes them, the report reads them.

    <output>/experiment.yaml                        the settings as run (rerun: --config it)
    <output>/data/                                 synthetic TFRecords (when the grid asks), stores/ beside them
    <output>/cells/<cell>/config.yaml              the cell's config: `vdistill fit --config` it to rerun the cell
    <output>/cells/<cell>/stage1.yaml              a two-stage student's first-stage config
    <output>/cells/<cell>/fit/                     the fit's run directory (`--run_dir`), stage1/ for a first stage
    <output>/cells/<cell>/fit/checkpoints/best.ckpt  the tested weights
    <output>/cells/<cell>/fit/csv/version_0/metrics.csv  per-epoch metrics logged by fit (CSVLogger)
    <output>/cells/<cell>/test/                    the test's run directory
    <output>/cells/<cell>/test_metrics.json        `vdistill test --metrics_json`
    <output>/cells/<cell>/log.txt                  the commands run and their output
    <output>/cells/<cell>/done.json                written last, atomically: the cell finished
    <output>/cost/<family>-teacher.json, -k<k>.json  `vdistill profile` output
    <output>/report.md, report.json, *.png, wandb/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths of one experiment's files.

    Attributes:
        root: the experiment's output directory.
    """

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def store_dir(self) -> Path:
        return self.root / "data" / "stores"

    def cell_dir(self, cell: str) -> Path:
        return self.root / "cells" / cell

    def config(self, cell: str) -> Path:
        return self.cell_dir(cell) / "config.yaml"

    def fit_dir(self, cell: str) -> Path:
        """The run directory of the cell's (final) fit."""
        return self.cell_dir(cell) / "fit"

    def test_dir(self, cell: str) -> Path:
        return self.cell_dir(cell) / "test"

    def checkpoint(self, cell: str) -> Path:
        """The weights the cell is tested with."""
        return checkpoint_path(self.fit_dir(cell))

    def curves(self, cell: str) -> Path:
        """The fit's CSV log (a fresh run directory, so its first and only version)."""
        return self.fit_dir(cell) / "csv" / "version_0" / "metrics.csv"

    def test_metrics(self, cell: str) -> Path:
        return self.cell_dir(cell) / "test_metrics.json"

    def done(self, cell: str) -> Path:
        return self.cell_dir(cell) / "done.json"

    def cost(self, family: str, model: str) -> Path:
        """Profile of the teacher (``model="teacher"``) or of the k-frame models (``model="k6"``): the
        ``vdistill profile`` output under ``profile``, with the ``fingerprint`` of the config profiled."""
        return self.root / "cost" / f"{family}-{model}.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"


def checkpoint_path(run_dir: Path) -> Path:
    """The checkpoint a training run in ``run_dir`` keeps: the best by its config's monitored metric, or the
    latest when it monitors none."""
    return run_dir / "checkpoints" / "best.ckpt"


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``."""
    return json.loads(path.read_text())
