"""``vdistill fit | validate | test | predict | profile``: LightningCLI, wired for vdistill.

The data module's class count feeds the model; every command writes into a run directory of its own
(``cli/run_directory.py``) and ends by saying what it wrote where (``cli/outputs.py``); ``test`` prints its
metrics once and writes them as JSON; ``predict`` writes the Kaggle file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_distill.cli.display import ModelSummary, ProgressBar
from lightning_distill.cli.outputs import fit_outputs, write_into
from lightning_distill.cli.parsing import ConciseErrors
from lightning_distill.config_files import expand_composed
from lightning_distill.cli.summary import print_summary
from lightning_distill.cli.run_directory import (
    RUN_DIR_ENV,
    RUNS_ROOT,
    choose_run_directory,
    default_run_name,
    default_teacher_checkpoint,
    link_latest,
)
from lightning_distill.cli.trainer import VDistillTrainer
from lightning_distill.data.datamodule import SPLITS, YT8MDataModule, find_num_classes
from lightning_distill.data.yt8m import NUM_CLASSES
from lightning_distill.errors import VDistillError
from lightning_distill.evaluation.cost_callback import CostProfileLogger
from lightning_distill.evaluation.predictions import KagglePredictionWriter
from lightning_distill.evaluation.tables import print_metrics, write_metrics_json
from lightning_distill.training.checkpoints import check_checkpoint
from lightning_distill.training.module import VideoClassifierModule

# Offline by default: no network is assumed; `wandb sync <run dir>/wandb/offline-run-*` uploads later. Its
# save_dir is the run directory (cli/outputs.write_into).
DEFAULT_LOGGER = {
    "class_path": "lightning_distill.cli.wandb_logger.WandbLogger",
    "init_args": {"project": "vdistill", "offline": True},
}

# Lines Lightning prints on every run that say nothing a vdistill user can act on: the advertisement for its
# LitLogger (vdistill logs to W&B, CSV or TensorBoard) and the note that our own ModelSummary replaces its default.
LIGHTNING_NOISE = ("litlogger", "Skipping setting a default `ModelSummary`")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not any(noise in record.getMessage() for noise in LIGHTNING_NOISE)
)

# Lightning flattens batches with a torch pytree class torch has deprecated; the user can do nothing about it.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

# The metric prefix each evaluating command logs under.
STAGES = {"validate": "val", "test": "test"}


class LoggedConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run dir>/config.yaml`` and logs it to the logger, so a W&B run shows the
    exact data, model and trainer settings it was trained with. (LightningCLI's default writes to the logger's
    directory, which for W&B was ``runs/``, shared by every run.)"""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False)})


class ModelParser(ConciseErrors, LightningArgumentParser):
    """The model commands' parser: no abbreviations, one-line errors with a "did you mean"."""


class VDistillCLI(LightningCLI):
    """LightningCLI wired for vdistill: the data module's class count feeds the model, and ``profile`` and
    ``test`` print readable reports."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        # Configs that compose parts (config_files.py) are merged first. Without args LightningCLI reads sys.argv
        # itself (and warns if given both), and Lightning's DDP launcher reruns it: expanded there.
        if args is None:
            sys.argv[1:] = expand_composed(sys.argv[1:])
        else:
            args = expand_composed(args)
        super().__init__(
            model_class=VideoClassifierModule,
            subclass_mode_model=True,
            datamodule_class=YT8MDataModule,
            trainer_class=VDistillTrainer,
            trainer_defaults={"logger": DEFAULT_LOGGER, "callbacks": [CostProfileLogger()]},
            save_config_callback=LoggedConfig,
            parser_class=ModelParser,
            parser_kwargs={"description": "vdistill model commands (`vdistill --help` lists every command)."},
            args=args,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "profile": {"model", "datamodule"}, "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--runs_root",
            type=str,
            default=RUNS_ROOT,
            help="folder of the runs/<run_name>/<command>_<n> run directories (and of a student's default teacher).",
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="runs/<run_name>/<command>_<n> holds this command's files (default: role, family and k, e.g. "
            "student_hrnn_k6).",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="write this command's files (config, checkpoints, logs, metrics, predictions) here instead.",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="allow --run_dir to be a directory that already holds another run's files.",
        )
        parser.add_argument(
            "--metrics_json",
            type=str | None,
            default=None,
            help="validate/test: where to write the metrics as JSON (default: <run dir>/<stage>_metrics.json).",
        )
        parser.add_argument(
            "--predictions",
            type=str | None,
            default=None,
            help="predict: write the Kaggle file (VideoId,LabelConfidencePairs, top 20) here, streamed per batch "
            "(default: <run dir>/predictions.csv).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self._args = args  # what the user gave, parsed again by _parse_ckpt_path when there is a checkpoint

    def _parse_ckpt_path(self) -> None:
        # LightningCLI rebuilds the model from the checkpoint's hyper-parameters; check the file first so a
        # missing, corrupt or foreign checkpoint is one clear line rather than a deep torch traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path:
            return
        check_checkpoint(ckpt_path, self.config[subcommand].get("model"))
        super()._parse_ckpt_path()
        # LightningCLI puts the checkpoint's hyper-parameters over everything the user gave, so `vdistill test
        # --ckpt_path P --model.init_args.sampler.init_args.k 10` would test at the k the model was trained at. The
        # checkpoint fills in what the user left out; what they gave wins. Their settings without the parser's
        # defaults, not validated: without defaults some are incomplete (a CSVLogger's save_dir comes later).
        parse = self.parser.parse_object if isinstance(self._args, dict) else self.parser.parse_args
        given = parse(self._args, defaults=False, _skip_validation=True).get(subcommand)
        if given is not None and given.get("model") is not None:
            self.config = self.parser.parse_object({subcommand: {"model": given.model}}, self.config)

    def before_instantiate_classes(self) -> None:
        """Direct every file the command writes into its run directory (``cli/run_directory.py``), and show what a
        user needs while it runs (``cli/display.py``)."""
        # Built with run=False (from Python) there is no subcommand; the caller usually fits next.
        config = self.config[self.subcommand] if self.subcommand else self.config
        displays = [ProgressBar()] if config.trainer.enable_progress_bar is not False else []
        displays += [ModelSummary()] if config.trainer.enable_model_summary is not False else []
        self.trainer_defaults["callbacks"] = [CostProfileLogger(), *displays]
        self.run_dir = choose_run_directory(
            self.subcommand or "fit",
            runs_root=config.runs_root,
            run_name=config.run_name or default_run_name(config.model),
            run_dir=config.run_dir,
            overwrite=config.overwrite,
            ckpt_path=config.get("ckpt_path"),
            rank_zero=rank_zero_only.rank == 0,
        )
        write_into(config, self.run_dir, None if self.subcommand in (None, "fit") else config.get("ckpt_path"))
        # The run's own checkpoint folder holds files only when the fit resumes or --overwrite was given: both
        # chosen by the user, so Lightning's "exists and is not empty" says nothing they can act on.
        own_checkpoints = re.escape(str(self.run_dir.resolve() / "checkpoints"))
        warnings.filterwarnings("ignore", message=f"Checkpoint directory {own_checkpoints} exists and is not empty")
        student = config.model.init_args
        if str(config.model.class_path).endswith("StudentModule") and not (
            student.teacher_checkpoint or student.init_from or student.ensemble_teachers
        ):
            student.teacher_checkpoint = str(default_teacher_checkpoint(config.runs_root, config.model))
        if self.subcommand:
            # For the ranks Lightning launches (they rerun this command line): this run, not a new one. main()
            # takes it back when the command ends.
            os.environ[RUN_DIR_ENV] = str(self.run_dir.resolve())
        if self.subcommand in ("validate", "test"):
            config.verbose = False  # our table (``_report``) shows the metrics once, with fewer digits
            config.metrics_json = config.metrics_json or str(self.run_dir / f"{STAGES[self.subcommand]}_metrics.json")
        if self.subcommand == "predict":
            config.predictions = config.predictions or str(self.run_dir / "predictions.csv")
        if self.subcommand == "export":
            config.trainer.logger = False  # nothing to log: the file and its check are the result
        if self.subcommand == "profile" and config.data.num_classes is None:
            config.data.num_classes = _profiled_classes(config.data)

    def before_predict(self) -> None:
        self.trainer.callbacks.append(KagglePredictionWriter(self._get(self.config, "predictions")))
        # The file holds the predictions; keeping every batch's (B, C) scores in memory too would not scale.
        self.config_init[self.subcommand]["return_predictions"] = False

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            link_latest(self.run_dir)
            print_summary("fit", fit_outputs(self.trainer, self.run_dir))

    def after_validate(self) -> None:
        self._report("validate")

    def after_test(self) -> None:
        self._report("test")

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            print_summary("predict", {"predictions": self._get(self.config, "predictions"), "run": self.run_dir})

    def _report(self, command: str) -> None:
        stage = STAGES[command]
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        if not self.trainer.is_global_zero or not metrics:
            return
        print_metrics(metrics, title=f"{stage} metrics")
        path = write_metrics_json(metrics, self._get(self.config, "metrics_json"))
        if isinstance(self.trainer.logger, WandbLogger):
            rows = [[name, value] for name, value in sorted(metrics.items())]
            self.trainer.logger.log_table(key=f"{path.stem}_table", columns=["metric", "value"], data=rows)
        print_summary(command, {"metrics": path, "run": self.run_dir})


def _profiled_classes(data: Namespace) -> int:
    """``profile`` needs no data, only a class count: the data's if it is there, else YouTube-8M 2018's; says which."""
    sources = {split: data.get(f"{split}_files") for split in SPLITS}
    try:
        count, origin = find_num_classes(sources, data.store_dir, verify_crc=data.verify_crc), "from the data"
    except VDistillError:
        count, origin = NUM_CLASSES["2018"], "YouTube-8M 2018's vocabulary: no data found (set --data.num_classes)"
    print(f"classes: {count:,}, {origin}")
    return count


def run(args: Sequence[str] | None) -> None:
    """Run one model command (``args`` as after ``vdistill``; None reads ``sys.argv``)."""
    VDistillCLI(args=args)
