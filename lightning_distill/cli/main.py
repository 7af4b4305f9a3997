"""The ``vdistill`` command: LightningCLI's fit/validate/test/predict plus profile, and the data commands.

``vdistill convert|synth|inspect`` need no model, so they are dispatched to plain jsonargparse commands; every
other subcommand is LightningCLI's, with YAML configs, ``--help`` and ``--print_config`` as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import CLI
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from rich.console import Console

from lightning_distill.cli.allocator import keep_freed_memory
from lightning_distill.cli.data_commands import COMMANDS as DATA_COMMANDS
from lightning_distill.cli.experiment_command import COMMANDS as EXPERIMENT_COMMANDS
from lightning_distill.cli.trainer import VDistillTrainer
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.errors import VDistillError
from lightning_distill.evaluation.cost_callback import CostProfileLogger
from lightning_distill.evaluation.predictions import KagglePredictionWriter
from lightning_distill.evaluation.report import print_metrics, write_metrics_json
from lightning_distill.training.checkpoints import check_checkpoint
from lightning_distill.training.module import VideoClassifierModule

# Offline by default: no network is assumed; `wandb sync <save_dir>/wandb/offline-run-*` uploads later.
DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "vdistill", "save_dir": "runs", "offline": True},
}

STANDALONE_COMMANDS = {**DATA_COMMANDS, **EXPERIMENT_COMMANDS}


class LoggedConfig(SaveConfigCallback):
    """Saves the resolved config beside the run (LightningCLI's default) and also logs it to the logger, so a
    W&B run shows the exact data, model and trainer settings it was trained with."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False)})


class VDistillCLI(LightningCLI):
    """LightningCLI wired for vdistill: the data module's class count feeds the model, and ``profile`` and
    ``test`` print readable reports."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(
            model_class=VideoClassifierModule,
            subclass_mode_model=True,
            datamodule_class=YT8MDataModule,
            trainer_class=VDistillTrainer,
            trainer_defaults={"logger": DEFAULT_LOGGER, "callbacks": [CostProfileLogger()]},
            save_config_callback=LoggedConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": _description()},
            args=args,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "profile": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--metrics_json",
            type=str | None,
            default=None,
            help="validate/test: where to write the metrics as JSON (default: <log dir>/<stage>_metrics.json).",
        )
        parser.add_argument(
            "--predictions",
            type=str | None,
            default=None,
            help="predict: write the Kaggle file (VideoId,LabelConfidencePairs, top 20) here, streamed per batch.",
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI rebuilds the model from the checkpoint's hyper-parameters; check the file first so a
        # missing, corrupt or foreign checkpoint is one clear line rather than a deep torch traceback.
        subcommand = self.config.get("subcommand")
        if subcommand:
            ckpt_path = self.config[subcommand].get("ckpt_path")
            if ckpt_path:
                check_checkpoint(ckpt_path, self.config[subcommand].get("model"))
        super()._parse_ckpt_path()

    def before_predict(self) -> None:
        path = self._get(self.config, "predictions")
        if path:
            self.trainer.callbacks.append(KagglePredictionWriter(path))
            # The file holds the predictions; keeping every batch's (B, C) scores in memory too would not scale.
            self.config_init[self.subcommand]["return_predictions"] = False

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        if not self.trainer.is_global_zero or not metrics:
            return
        print_metrics(metrics, title=f"{stage} metrics")
        path = self._get(self.config, "metrics_json") or f"{self.trainer.log_dir or '.'}/{stage}_metrics.json"
        write_metrics_json(metrics, path, logger=self.trainer.logger)


def _description() -> str:
    data = ", ".join(STANDALONE_COMMANDS)
    return (
        "vdistill: video classification with fewer frames (teacher-student distillation on YouTube-8M). "
        f"Model commands are below; data and experiment commands ({data}) have their own --help, "
        "e.g. `vdistill convert --help`."
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``vdistill`` console script; ``args`` runs a command from Python instead."""
    argv = list(sys.argv[1:] if args is None else args)
    if args is None:
        # The allocator setting is process-wide and cannot be undone: right for a process of our own, not for
        # a caller's (a test session running dozens of commands, paper-size models among them, grew past 24 GB).
        keep_freed_memory()
    try:
        if argv and argv[0] in STANDALONE_COMMANDS:
            CLI(STANDALONE_COMMANDS, args=argv)
        else:
            # LightningCLI reads sys.argv itself and warns if given both.
            VDistillCLI(args=None if args is None else argv)
    except VDistillError as error:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
