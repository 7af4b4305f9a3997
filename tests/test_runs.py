"""Run directories and resumption: no command overwrites another's results, every command says where it wrote,
and a fit killed mid-epoch resumes to the weights an uninterrupted fit reaches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from cli_support import CONFIGS, data_args, run_error, run_ok

TEACHER = f"--config={CONFIGS / 'tiny' / 'teacher_hrnn.yaml'}"
SHORT_FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def test_reruns_never_replace_an_earlier_run(synthetic_tfrecords, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("# a config of the user's own\n")
    data = data_args(synthetic_tfrecords, tmp_path / "stores")  # logger: false, as the probe
    runs = tmp_path / "runs" / "tiny" / "teacher_hrnn"

    run_ok(["fit", TEACHER, *data, *SHORT_FIT])
    first = runs / "fit_0" / "checkpoints" / "best.ckpt"
    first_bytes = first.read_bytes()
    out = capsys.readouterr().out
    assert "vdistill fit done" in out and f"best checkpoint  {first} (val/gap " in out

    run_ok(["fit", TEACHER, *data, *SHORT_FIT, "--trainer.limit_train_batches=1"])
    assert first.read_bytes() == first_bytes
    assert (runs / "fit_1" / "checkpoints" / "best.ckpt").is_file()
    assert os.readlink(runs / "latest") == "fit_1"
    for run in ("fit_0", "fit_1"):
        assert "TeacherModule" in (runs / run / "config.yaml").read_text()
    assert (tmp_path / "config.yaml").read_text() == "# a config of the user's own\n"

    capsys.readouterr()
    run_ok(["test", TEACHER, *data, f"--ckpt_path={runs / 'latest' / 'checkpoints' / 'best.ckpt'}"])
    metrics = runs / "test_0" / "test_metrics.json"
    out = capsys.readouterr().out
    assert metrics.is_file() and f"metrics  {metrics.relative_to(tmp_path)}" in out
    assert out.count("test/gap") == 1  # one table, not Lightning's and ours

    run_ok(["predict", TEACHER, *data, f"--ckpt_path={first}", f"--data.predict_files={synthetic_tfrecords}/test*.tfrecord"])
    predictions = runs / "predict_0" / "predictions.csv"
    assert predictions.is_file() and f"predictions  {predictions.relative_to(tmp_path)}" in capsys.readouterr().out


def test_an_explicit_run_dir_is_not_overwritten_unless_asked(synthetic_tfrecords, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    run_ok(["fit", TEACHER, *data, *SHORT_FIT, "--run_dir=mine"])
    before = (tmp_path / "mine" / "checkpoints" / "best.ckpt").read_bytes()
    message = run_error(["fit", TEACHER, *data, *SHORT_FIT, "--run_dir=mine"], capsys)
    assert "run_dir mine already holds files of another run: pass --overwrite true" in message
    assert (tmp_path / "mine" / "checkpoints" / "best.ckpt").read_bytes() == before
    run_ok(["fit", TEACHER, *data, *SHORT_FIT, "--trainer.limit_train_batches=1", "--run_dir=mine",
            "--overwrite=true"])
    assert (tmp_path / "mine" / "checkpoints" / "best.ckpt").read_bytes() != before
    assert not (tmp_path / "runs").exists()


class KillAt(L.Callback):
    """SIGKILL this process when training batch ``step`` is about to start: the checkpoint of the step before
    has been written (checkpoint callbacks run last at a batch's end), nothing after it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_fit_killed_mid_epoch_resumes_to_the_uninterrupted_weights(synthetic_tfrecords, tmp_path):
    # 48 training videos in batches of 4: 12 steps an epoch; killed at step 15, in the second epoch, after the
    # step-15 checkpoint. Runs as real processes, as a user would.
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    every_3_steps = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=3",
                     "--trainer.callbacks.filename={step}"]
    fit = [sys.executable, "-m", "lightning_distill.cli.main", "fit", TEACHER, *data, "--trainer.max_epochs=2",
           "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--data.val_fraction=0.0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}

    def run(*args: str, expect_kill: bool = False) -> None:
        done = subprocess.run([*fit, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == (-signal.SIGKILL if expect_kill else 0), done.stderr[-3000:]

    run("--run_dir=whole", *every_3_steps)
    run("--run_dir=broken", *every_3_steps, "--trainer.callbacks+=test_runs.KillAt", "--trainer.callbacks.step=15",
        expect_kill=True)
    checkpoint = tmp_path / "broken" / "checkpoints" / "step=15.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 15 and state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    run(*every_3_steps, f"--ckpt_path={checkpoint}")  # continues in broken/, the checkpoint's run

    # The step checkpoints keep the latest: the end of training, step 24.
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "step=24.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "broken" / "checkpoints" / "step=24.ckpt", weights_only=True)
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
