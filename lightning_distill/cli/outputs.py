"""What a model command writes, and where: every output pointed into the run directory, and what a fit left.

LightningCLI's parsed config is edited before anything is built (``write_into``); a finished fit lists its
checkpoints and logs (``fit_outputs``) for the closing summary (``cli/summary.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger


def write_into(config: Namespace, run: Path, ckpt_path: str | None = None) -> None:
    """Point the subcommand's trainer, loggers and checkpoint callbacks at ``run``.

    Loggers (W&B, CSV, TensorBoard) save there, W&B naming the run after its directory; a ``ModelCheckpoint``
    without a ``dirpath`` saves into ``run/checkpoints``. An explicit ``dirpath`` is the user's choice and is kept
    (with Lightning's version counter: an existing ``best.ckpt`` there is kept and ``best-v1.ckpt`` written).
    Given the ``ckpt_path`` a validate/test/predict restores (they save nothing), the callback keeps pointing at
    that checkpoint's directory, where the fit that wrote it saved: a changed directory makes Lightning warn that
    it drops the callback's state.
    """
    trainer = config.trainer
    trainer.default_root_dir = str(run)
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue  # logger: false / true
        if "save_dir" in init_args:
            init_args.save_dir = str(run)
        if str(logger.class_path).endswith("WandbLogger") and init_args.get("name") is None:
            init_args.name = f"{run.parent.name}/{run.name}"
    checkpoints = str(Path(ckpt_path).parent) if ckpt_path else str(run / "checkpoints")
    for callback in trainer.callbacks or []:
        if _is_model_checkpoint(callback) and callback.init_args.get("dirpath") is None:
            callback.init_args.dirpath = checkpoints
            # The directory is this run's: a name already there is this run's own (a resumed fit) or one the user
            # asked to replace (--overwrite), never another run's to keep as best-v1.ckpt.
            callback.init_args.enable_version_counter = False


def _is_model_checkpoint(callback: Any) -> bool:
    return isinstance(callback, Namespace) and str(callback.class_path).endswith("ModelCheckpoint")


def fit_outputs(trainer: Trainer, run: Path) -> dict[str, Any]:
    """What a finished fit left: its run directory, best and last checkpoints (with the best score) and logs."""
    rows: dict[str, Any] = {"run": run}
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.best_model_path and callback.monitor and callback.best_model_score is not None:
            rows.setdefault(
                "best checkpoint",
                f"{callback.best_model_path} ({callback.monitor} {float(callback.best_model_score):.4f})",
            )
        elif callback.best_model_path:
            rows.setdefault("checkpoint", callback.best_model_path)
        if callback.last_model_path:
            rows.setdefault("last checkpoint", callback.last_model_path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            rows["W&B run"] = Path(logger.experiment.dir).parent
        elif logger.log_dir:
            rows[f"{type(logger).__name__} logs"] = logger.log_dir
    return rows
