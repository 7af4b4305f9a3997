"""A cell's config: its role's base config with the grid's settings and the cell's own choices merged in.

The result is one self-contained ``vdistill fit``/``test`` config (absolute paths, no reference to the base
file), so ``vdistill fit --config <cell>/config.yaml`` reruns the cell by hand.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_distill.errors import ConfigError
from lightning_distill.experiment.grid import Cell, Grid
from lightning_distill.experiment.layout import ExperimentLayout, checkpoint_path

MODEL_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
CHECKPOINT_NAME = "best"
SAMPLERS_MODULE = "lightning_distill.data.samplers"
LOSS_CLASSES = {
    "rep": "lightning_distill.training.losses.RepresentationLoss",
    "rep_i": "lightning_distill.training.losses.IntermediateRepresentationLoss",
    "pred": "lightning_distill.training.losses.PredictionLoss",
    "ce": "lightning_distill.training.losses.ClassificationLoss",
}


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base`` (neither is changed): mappings merge key by key, anything else replaces.

    A mapping that names a different ``class_path`` replaces the base's entirely, since the old class's
    ``init_args`` would not fit the new class.
    """
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, or ``ConfigError`` naming the file."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read base config {path} ({type(error).__name__}): fix or replace it") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"base config {path} is not a mapping of config sections: give a `vdistill fit` config")
    return loaded


def with_run_settings(config: dict[str, Any], run_name: str, seed: int, grid: Grid) -> dict[str, Any]:
    """``config`` with the grid's trainer settings, the seed, and the logs every cell keeps.

    Every run logs to a CSV file (per-epoch validation curves the report reads back) and an offline W&B run;
    ``vdistill`` puts both, the config and the checkpoints into the run directory the runner gives it
    (``--run_dir``), so parallel runs never share a file.
    """
    trainer = deep_merge(config.get("trainer") or {}, grid.trainer)
    trainer["enable_checkpointing"] = True
    trainer["logger"] = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "csv"}},
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "vdistill", "name": run_name, "offline": True},
        },
    ]
    trainer["callbacks"] = with_checkpoint(trainer.get("callbacks") or [])
    return {**config, "seed_everything": seed, "trainer": trainer}


def with_checkpoint(callbacks: list[Any]) -> list[Any]:
    """``callbacks`` with exactly one ``ModelCheckpoint``, saving ``best.ckpt`` into the run's checkpoints.

    The base config's first ``ModelCheckpoint`` is kept with its monitor (so the tested weights are the best
    by validation, as a plain ``vdistill fit`` would keep); further ones are dropped. Without one, the latest
    weights are saved as ``best.ckpt``.
    """
    kept = [c for c in callbacks if not _is_model_checkpoint(c)]
    base = next((c for c in callbacks if _is_model_checkpoint(c)), {"class_path": MODEL_CHECKPOINT})
    checkpoint = deep_merge(base, {"init_args": {"dirpath": None, "filename": CHECKPOINT_NAME}})
    return [*kept, checkpoint]


def _is_model_checkpoint(callback: Any) -> bool:
    return isinstance(callback, dict) and str(callback.get("class_path", "")).split(".")[-1] == "ModelCheckpoint"


@dataclass(frozen=True)
class FitRun:
    """One ``vdistill fit`` of a cell.

    Attributes:
        config_path: where its config is saved (the cell's ``config.yaml`` for the final fit).
        run_dir: its ``--run_dir``.
        config: the config.
    """

    config_path: Path
    run_dir: Path
    config: dict[str, Any]


def cell_configs(cell: Cell, grid: Grid, layout: ExperimentLayout, data: dict[str, Any]) -> list[FitRun]:
    """The fits of ``cell``, in order; the last is the cell's own (``config.yaml``), whose checkpoint is tested.

    Args:
        cell: the cell.
        grid: the grid it came from (trainer settings, k overrides, loss weights).
        layout: the experiment's files.
        data: ``YT8MDataModule`` init args shared by every cell (the grid's, with the data files filled in).
    """
    base = load_yaml(cell.base_config)
    model: dict[str, Any] = {}
    if cell.sampler is not None:
        model["sampler"] = {"class_path": f"{SAMPLERS_MODULE}.{cell.sampler}", "init_args": {"k": cell.k}}
    if cell.teacher is not None:
        model["teacher_checkpoint"] = str(layout.checkpoint(cell.teacher))
    # The data module is LightningCLI's fixed datamodule_class, so its arguments sit directly under ``data``.
    shared = {"model": {"init_args": model}, "data": data}
    if cell.k is not None:
        shared = deep_merge(shared, grid.k_overrides.get(cell.k, {}))
    config = deep_merge(base, shared)
    config.pop("run_name", None)  # the runner names the run directory itself
    if cell.variant is not None:
        # Set, not merged: the base's other terms must not survive into a smaller loss set.
        init_args = config["model"]["init_args"]
        init_args["loss"] = loss_terms(cell.variant.losses, cell.variant.weights, init_args.get("loss") or {})

    final = FitRun(
        layout.config(cell.name), layout.fit_dir(cell.name), with_run_settings(config, cell.name, cell.seed, grid)
    )
    if cell.variant is None or not cell.variant.two_stage:
        return [final]
    # The paper's L_rep-only recipe: the student first matches the teacher's representation (its head, a copy
    # of the teacher's, gets no gradient), then it and that head are fine-tuned with L_CE, teacher-free.
    stage1_dir = layout.cell_dir(cell.name) / "stage1"
    stage2 = copy.deepcopy(final.config)
    stage2["model"]["init_args"].update(
        teacher_checkpoint=None,
        loss=loss_terms(["ce"], {}, config["model"]["init_args"]["loss"]),
        init_from=str(checkpoint_path(stage1_dir)),
    )
    stage1 = with_run_settings(config, f"{cell.name}/stage1", cell.seed, grid)
    return [
        FitRun(layout.cell_dir(cell.name) / "stage1.yaml", stage1_dir, stage1),
        FitRun(final.config_path, final.run_dir, stage2),
    ]


def loss_terms(names: list[str], weights: dict[str, float], base_terms: dict[str, Any]) -> dict[str, Any]:
    """The ``loss`` argument of a student: one term per name, keeping the base config's settings of a term
    (e.g. its weight or L_pred's distance) unless ``weights`` sets the weight."""
    terms = {}
    for name in names:
        term = base_terms.get(name)
        if not isinstance(term, dict) or term.get("class_path") != LOSS_CLASSES[name]:
            term = {"class_path": LOSS_CLASSES[name]}
        if name in weights:
            term = deep_merge(term, {"init_args": {"weight": weights[name]}})
        terms[name] = term
    return terms


def dump_yaml(config: dict[str, Any]) -> str:
    """The YAML text a config is saved as (key order kept, so a saved config reads like the base)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
