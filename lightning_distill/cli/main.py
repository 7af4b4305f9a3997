"""The ``vdistill`` command: one entry point that imports only what the chosen command needs.

Model commands (fit, validate, test, predict, profile) are LightningCLI's (``cli/model_commands.py``); the data
and experiment commands are plain jsonargparse functions and load neither Lightning nor, for the data commands,
torch, so ``vdistill --help`` and ``vdistill convert`` start in a fraction of the time ``import lightning`` takes.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from lightning_distill import __version__
from lightning_distill.cli.allocator import keep_freed_memory
from lightning_distill.cli.run_directory import RUN_DIR_ENV
from lightning_distill.errors import VDistillError

MODEL_COMMANDS = "lightning_distill.cli.model_commands"
# Command -> (module that runs it, what it does). Model commands go to LightningCLI; the others are functions of
# the same name in their module.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": (MODEL_COMMANDS, "train a teacher, a from-scratch baseline or a student (Serial or Parallel)"),
    "validate": (MODEL_COMMANDS, "score a checkpoint on the validation split"),
    "test": (MODEL_COMMANDS, "score a checkpoint on the test split: YouTube-8M metrics as a table and JSON"),
    "predict": (MODEL_COMMANDS, "write a Kaggle prediction file (top-20 classes per video)"),
    "profile": (MODEL_COMMANDS, "parameters, MACs, FLOPs and measured videos/s of a configured model"),
    "export": (MODEL_COMMANDS, "write a trained model as ONNX or TorchScript, raw uint8 frames in, checked"),
    "score": ("lightning_distill.cli.score_command", "run an exported model over a store or TFRecords (no Lightning)"),
    "convert": ("lightning_distill.cli.data_commands", "convert YouTube-8M TFRecords into an HDF5 frame store"),
    "synth": ("lightning_distill.cli.data_commands", "write a synthetic YouTube-8M data set as TFRecords"),
    "inspect": ("lightning_distill.cli.data_commands", "summarise (and --verify) a frame store"),
    "experiment": ("lightning_distill.cli.experiment_command", "train and compare a grid of models, write a report"),
}


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``vdistill`` console script; ``args`` runs a command from Python instead."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        sys.exit(0)
    if argv[0] == "--version":
        print(f"vdistill {__version__}")
        sys.exit(0)
    command = argv[0]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}{_did_you_mean(command, COMMANDS)}; `vdistill --help` lists them")
    if args is None:
        # The allocator setting is process-wide and cannot be undone: right for a process of our own, not for
        # a caller's (a test session running dozens of commands, paper-size models among them, grew past 24 GB).
        keep_freed_memory()
    handed_run_dir = os.environ.get(RUN_DIR_ENV)
    module = importlib.import_module(COMMANDS[command][0])
    try:
        if module.__name__ == MODEL_COMMANDS:
            module.run(None if args is None else argv)
        else:
            from jsonargparse import auto_cli

            from lightning_distill.cli.parsing import PlainParser

            auto_cli({command: getattr(module, command)}, args=argv, parser_class=PlainParser)
    except Exception as error:
        user_error = _user_error(error)
        if user_error is None:
            raise
        _fail(str(user_error))
    finally:
        # The run directory a model command chose is for the ranks it launched, not for a caller's next command.
        if handed_run_dir is None:
            os.environ.pop(RUN_DIR_ENV, None)


def _print_help() -> None:
    width = max(map(len, COMMANDS))
    lines = [
        f"vdistill {__version__}: video classification with fewer frames (teacher-student distillation, YouTube-8M)",
        "",
        "usage: vdistill <command> [options]      vdistill <command> --help      vdistill --version",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "Start with the README's quick start, or: vdistill synth --output data/synthetic",
    ]
    print("\n".join(lines))


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _user_error(error: BaseException) -> VDistillError | None:
    """``error`` if it is a ``VDistillError``, else the first one in its chain of causes: jsonargparse wraps what a
    constructor raises while it builds the configured classes (``k=20 is not a multiple ...``) in a ValueError that
    lists every type it tried."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, VDistillError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
