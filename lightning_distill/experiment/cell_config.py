"""A cell's config: its role's and family's config parts with the grid's settings and the cell's own choices merged
in.

The result is one self-contained ``vdistill fit``/``test`` config (absolute paths, no reference to the base
file), so ``vdistill fit --config <cell>/config.yaml`` reruns the cell by hand.
"""

from __future__ import annotations

import copy
from functools import reduce
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from lightning_distill.class_paths import class_path
from lightning_distill.config_files import deep_merge, load_config
from lightning_distill.data.samplers import AnyKSampler
from lightning_distill.experiment.grid import BASELINES, LOSS_TERMS, SELECTIONS, Cell, Grid
from lightning_distill.experiment.layout import ExperimentLayout, checkpoint_path
from lightning_distill.training.early_stopping import DelayedEarlyStopping
from lightning_distill.training.skim_sampler import SkimSampler
from lightning_distill.training.student import ANY_K_METRIC

MODEL_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"
CHECKPOINT_NAME = "best"


def with_run_settings(
    config: dict[str, Any],
    run_name: str,
    seed: int,
    grid: Grid,
    trainer: dict[str, Any] | None = None,
    stop_on: str | None = None,
    watch_from: int = 0,
    after_student_joins: bool = False,
) -> dict[str, Any]:
    """``config`` with the grid's trainer settings (or ``trainer``, settings given instead), the seed, and the logs
    every cell keeps; with the grid's patience, early stopping on ``stop_on`` (default: the checkpoint's metric),
    whose checks start at epoch ``watch_from`` and, with ``after_student_joins``, once a Parallel student whose join
    is decided during the fit has joined (``DelayedEarlyStopping`` for either).

    Every run logs to a CSV file (per-epoch validation curves the report reads back) and an offline W&B run;
    ``vdistill`` puts both, the config and the checkpoints into the run directory the runner gives it
    (``--run_dir``), so parallel runs never share a file.
    """
    trainer = deep_merge(config.get("trainer") or {}, grid.trainer if trainer is None else trainer)
    trainer["enable_checkpointing"] = True
    trainer["logger"] = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "csv"}},
        {
            "class_path": "lightning_distill.cli.wandb_logger.WandbLogger",
            "init_args": {"project": "vdistill", "name": run_name, "offline": True},
        },
    ]
    trainer["callbacks"] = with_checkpoint(trainer.get("callbacks") or [])
    if grid.patience is not None:
        # Stop when the checkpoint's metric (the best validation GAP) stops improving: cells are compared at
        # convergence, not at an arbitrary epoch.
        kept_by = trainer["callbacks"][-1].get("init_args", {})
        monitor = stop_on or kept_by.get("monitor") or "val/gap"
        # In the checkpoint's direction (Lightning's default: min): a skim's val/utility is an error to lower.
        mode = kept_by.get("mode", "min") if monitor == kept_by.get("monitor") else "max"
        early = {"monitor": monitor, "mode": mode, "patience": grid.patience}
        stopping = EARLY_STOPPING
        if watch_from or after_student_joins:
            stopping, early = class_path(DelayedEarlyStopping), {**early, "start_epoch": watch_from}
            if after_student_joins:
                early["after_student_joins"] = True
        trainer["callbacks"].insert(-1, {"class_path": stopping, "init_args": early})
    return {**config, "seed_everything": seed, "trainer": trainer}


def with_checkpoint(callbacks: list[Any]) -> list[Any]:
    """``callbacks`` with exactly one ``ModelCheckpoint``, saving ``best.ckpt`` into the run's checkpoints.

    The base config's first ``ModelCheckpoint`` is kept with its monitor (so the tested weights are the best
    by validation, as a plain ``vdistill fit`` would keep); further ones are dropped. Without one, the latest
    weights are saved as ``best.ckpt``.
    """
    kept = [c for c in callbacks if not _is_model_checkpoint(c) and not _is_early_stopping(c)]
    base = next((c for c in callbacks if _is_model_checkpoint(c)), {"class_path": MODEL_CHECKPOINT})
    checkpoint = deep_merge(base, {"init_args": {"dirpath": None, "filename": CHECKPOINT_NAME}})
    return [*kept, checkpoint]


def _is_model_checkpoint(callback: Any) -> bool:
    return isinstance(callback, dict) and str(callback.get("class_path", "")).split(".")[-1] == "ModelCheckpoint"


def _is_early_stopping(callback: Any) -> bool:
    return isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("EarlyStopping")


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
    base = reduce(deep_merge, (load_config(path) for path in cell.base_configs), {})
    model: dict[str, Any] = {}
    if cell.sampler is not None:
        model["sampler"] = {"class_path": class_path(BASELINES[cell.sampler]), "init_args": {"k": cell.k}}
    if cell.train_sampler is not None:
        model["train_sampler"] = {"class_path": class_path(BASELINES[cell.train_sampler]), "init_args": {"k": cell.k}}
    if cell.scorer is not None:
        chosen_by = {"k": cell.k, "scorer_checkpoint": str(layout.checkpoint(cell.scorer))}
        model["sampler"] = {"class_path": class_path(SkimSampler), "init_args": chosen_by}
    if cell.teacher is not None:
        model["teacher_checkpoint"] = str(layout.checkpoint(cell.teacher))
    if cell.ensemble:
        model["ensemble_teachers"] = [str(layout.checkpoint(name)) for name in cell.ensemble]
    # The data module is LightningCLI's fixed datamodule_class, so its arguments sit directly under ``data``.
    shared = {"model": {"init_args": model}, "data": data}
    if cell.k is not None:
        shared = deep_merge(shared, grid.k_overrides.get(cell.k, {}))
    if cell.encoder:
        shared = deep_merge(shared, {"model": {"init_args": {"encoder": {"init_args": cell.encoder}}}})
    config = deep_merge(base, shared)
    config.pop("run_name", None)  # the runner names the run directory itself
    if cell.variant is not None:
        # Set, not merged: the base's other terms must not survive into a smaller loss set.
        init_args = config["model"]["init_args"]
        init_args["loss"] = loss_terms(
            cell.variant.losses, cell.variant.weights, init_args.get("loss") or {}, cell.variant.options
        )
        config["model"]["init_args"] = deep_merge(init_args, cell.variant.module)
        if cell.variant.train_ks:
            # A selection's any-k student trains on Uniform frames: its scorer chooses at the k it is tested at.
            any_k = {"ks": list(cell.variant.train_ks), "selection": cell.sampler or "uniform"}
            if cell.variant.train_every_batch:
                any_k["every_batch"] = list(cell.variant.train_every_batch)
            config["model"]["init_args"]["train_sampler"] = {"class_path": class_path(AnyKSampler), "init_args": any_k}
            config["model"]["init_args"]["validation_ks"] = sorted(grid.ks)

    # A frame scorer trains for its role's epochs: the grid's max_epochs is about the models it compares.
    trainer = grid.trainer
    if cell.role in SELECTIONS.values():
        trainer = {key: value for key, value in grid.trainer.items() if key != "max_epochs"}
    stop_on, watch_from, after_join = None, 0, False
    if cell.variant is not None:
        trainer = deep_merge(trainer, cell.variant.trainer)
        # One checkpoint serves every k: kept, and stopped, by the mean validation GAP over the ks it is tested at.
        stop_on = cell.variant.stop_on or (ANY_K_METRIC if cell.variant.train_ks else None)
        # A student that joins late cannot improve before it joins; the teacher's metric (stop_on) can.
        if not stop_on:
            watch_from = cell.variant.module.get("student_start_epoch") or 0
            after_join = cell.variant.module.get("student_start_patience") is not None
    settings = with_run_settings(config, cell.name, cell.seed, grid, trainer, stop_on, watch_from, after_join)
    if cell.variant is not None and cell.variant.train_ks:
        # The best at the cell's one k would favour that k (measured: kept at the grid's first k, tiny NetVLAD's
        # any-k students lost 0.02 GAP at k = 30; at its largest k, one lost 0.069 at k = 6), and the last weights
        # are the patience epochs past the best (one 0.026 below at k = 30): the mean weighs every k.
        checkpoint = settings["trainer"]["callbacks"][-1]
        checkpoint["init_args"] = {**checkpoint.get("init_args", {}), "monitor": ANY_K_METRIC, "mode": "max"}
    final = FitRun(layout.config(cell.name), layout.fit_dir(cell.name), settings)
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


def loss_terms(
    names: list[str],
    weights: dict[str, float],
    base_terms: dict[str, Any],
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``loss`` argument of a student: one term per name, keeping the base config's settings of a term
    (e.g. its weight or L_pred's distance) unless ``weights`` sets the weight or ``options`` other settings."""
    terms = {}
    for name in names:
        term = base_terms.get(name)
        if not isinstance(term, dict) or term.get("class_path") != class_path(LOSS_TERMS[name]):
            term = {"class_path": class_path(LOSS_TERMS[name])}
        settings = {**(options or {}).get(name, {}), **({"weight": weights[name]} if name in weights else {})}
        if settings:
            term = deep_merge(term, {"init_args": settings})
        terms[name] = term
    return terms
