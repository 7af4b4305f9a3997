"""Driving ``vdistill`` from tests as a user would: the command line given to ``main``, outcomes checked."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import SYNTHETIC_CLASSES
from lightning_distill.cli.main import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
T = TypeVar("T")


def in_own_context(function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` in a copy of the current context.

    jsonargparse keeps the last parser in a context variable, and through it the CLI with its trainer and model:
    run in the test's own context, a paper-size model would stay alive into the next test.
    """
    return contextvars.copy_context().run(function, *args)


def data_args(root: Path, store_dir: Path) -> list[str]:
    """Point a config's data section at the session's synthetic shards, with batches small enough for CPU."""
    return [
        f"--data.train_files={root}/train*.tfrecord",
        f"--data.val_files={root}/validate*.tfrecord",
        f"--data.test_files={root}/test*.tfrecord",
        f"--data.store_dir={store_dir}",
        f"--data.num_classes={SYNTHETIC_CLASSES}",
        "--data.batch_size=4",
        "--data.max_frames=40",
        "--trainer.logger=false",
    ]


def run_ok(args: list[str]) -> None:
    """Run ``vdistill`` and fail the test if it exits (the CLI exits only on errors or --help)."""
    try:
        in_own_context(main, args)
    except SystemExit as exit_:
        pytest.fail(f"vdistill {' '.join(args[:3])} exited with {exit_.code}")


def run_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``vdistill`` expecting a user error: exit code 2, no traceback, one error line, which is returned.

    Lightning's own progress lines may precede it on stderr; the error is the line starting with "error:".
    """
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        in_own_context(main, args)
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr[-3000:]
    (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return message


def teacher_checkpoint(student_config: str, root: Path, tmp_path: Path, folder: str = "tiny") -> Path:
    """Train the matching teacher config for one step and return its last checkpoint."""
    teacher = CONFIGS / folder / student_config.replace("student_", "teacher_")
    run_ok(["fit", f"--config={teacher}", *data_args(root, tmp_path / "stores"), "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    (checkpoint,) = tmp_path.glob("runs/tiny/teacher_*/latest/checkpoints/last.ckpt")
    return checkpoint


def skim_sampler_arg(scorer: Path, k: int = 4) -> str:
    """The command-line argument that makes a student read the frames ``scorer`` (a skim's checkpoint) chooses."""
    return ("--model.init_args.sampler={class_path: lightning_distill.training.skim_sampler.SkimSampler, "
            f"init_args: {{k: {k}, scorer_checkpoint: {scorer}}}}}")


def fit_and_test_skim_student(scorer: Path, teacher: Path, data: list[str], short: list[str],
                              tmp_path: Path) -> tuple[dict[str, float], Path]:
    """Fit the tiny NetVLAD student on the 4 frames ``scorer`` chooses, test it, and return its test metrics and
    checkpoint (under ``tmp_path/runs/tiny/student_netvlad_k4``)."""
    student = CONFIGS / "tiny" / "student_netvlad.yaml"
    sampler = skim_sampler_arg(scorer)
    run_ok(["fit", f"--config={student}", *data, *short, f"--model.init_args.teacher_checkpoint={teacher}", sampler])
    (checkpoint,) = tmp_path.glob("runs/tiny/student_netvlad_k4/latest/checkpoints/last.ckpt")
    run_ok(["test", f"--config={student}", *data, f"--ckpt_path={checkpoint}", sampler])
    metrics = max(tmp_path.glob("runs/tiny/student_netvlad_k4/test_*/test_metrics.json"))
    return json.loads(metrics.read_text()), checkpoint


def skim_test_setup(root: Path, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """For a skim's command-line test: a tiny NetVLAD teacher trained for a step, the data arguments and the trainer
    arguments of a short fit."""
    teacher = teacher_checkpoint("student_netvlad.yaml", root, tmp_path)
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
    return teacher, data_args(root, tmp_path / "stores"), short
