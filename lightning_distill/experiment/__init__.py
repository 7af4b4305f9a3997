"""``vdistill experiment``: a grid of teachers, baselines and students (``grid``), each cell's config
(``cell_config``), running the cells (``runner``) and the Table-1-style report (``report``, ``plots``, ``tsne``).
"""

from lightning_distill.experiment.grid import Cell, Grid, StudentVariant, expand_grid
from lightning_distill.experiment.runner import run_experiment

__all__ = ["Cell", "Grid", "StudentVariant", "expand_grid", "run_experiment"]
