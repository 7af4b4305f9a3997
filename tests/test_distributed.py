"""Multi-process DDP (2 CPU processes, gloo) through fit, test and predict, as ``vdistill`` runs it (a Serial
student from cached teacher targets included): the metrics of a DDP test equal a single process's on the same
checkpoint, with a test set the ranks cannot split evenly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import CONFIGS, data_args, run_ok

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
# 16 test videos in batches of 6: 3 batches for 2 ranks (Lightning's own sampler would repeat one).
EVALUATION = ["--data.batch_size=6"]
FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
       "--trainer.enable_progress_bar=false"]


def vdistill(cwd: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lightning_distill.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]


def metrics_of(cwd: Path, config: str, data: list[str], checkpoint: Path, ddp: bool) -> dict[str, float]:
    """``vdistill test`` of ``checkpoint``: under DDP in processes of its own, else in this one (no start-up)."""
    name = f"{checkpoint.parent.parent.name}_{'ddp' if ddp else 'single'}"
    args = ["test", config, *data, *EVALUATION, f"--ckpt_path={checkpoint}", f"--metrics_json={cwd / name}.json",
            f"--run_dir={cwd / name}"]
    if ddp:
        vdistill(cwd, *args, *DDP)
    else:
        run_ok(args)
    return json.loads((cwd / f"{name}.json").read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="DDP on CPU is exercised on Linux")
def test_ddp_fit_test_and_predict_match_a_single_process(synthetic_tfrecords, tmp_path):
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    teacher_config = f"--config={CONFIGS / 'tiny' / 'teacher_hrnn.yaml'}"
    student_config = f"--config={CONFIGS / 'tiny' / 'student_hrnn.yaml'}"

    vdistill(tmp_path, "fit", teacher_config, *data, *FIT, *DDP, "--run_dir=teacher")
    teacher = tmp_path / "teacher" / "checkpoints" / "best.ckpt"
    single = metrics_of(tmp_path, teacher_config, data, teacher, ddp=False)
    ddp = metrics_of(tmp_path, teacher_config, data, teacher, ddp=True)
    assert ddp.keys() == single.keys() and ddp == pytest.approx(single, abs=1e-6)

    vdistill(tmp_path, "fit", student_config, *data, *FIT, *DDP, "--run_dir=student",
             f"--model.init_args.teacher_checkpoint={teacher}")
    student = tmp_path / "student" / "checkpoints" / "best.ckpt"
    # The Serial student trained from the teacher's cached targets, built once (rank 0) under the cache's lock.
    assert len(list((tmp_path / "stores").glob("train.targets-*.h5"))) == 1
    single = metrics_of(tmp_path, student_config, data, student, ddp=False)
    ddp = metrics_of(tmp_path, student_config, data, student, ddp=True)
    assert ddp == pytest.approx(single, abs=1e-6)

    vdistill(tmp_path, "predict", student_config, *data, *EVALUATION, *DDP, f"--ckpt_path={student}",
             f"--data.predict_files={synthetic_tfrecords}/test*.tfrecord", "--run_dir=predict")
    rows = (tmp_path / "predict" / "predictions.csv").read_text().splitlines()
    ids = [row.split(",")[0] for row in rows[1:]]
    assert rows[0] == "VideoId,LabelConfidencePairs" and len(ids) == len(set(ids)) == 16
