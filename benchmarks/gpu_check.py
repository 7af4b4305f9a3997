"""The GPU check (run by benchmarks/gpu.sh): training and inference cost of teachers and Serial students at
paper size, and multi-GPU evaluation that agrees with one GPU.

For each family: `vdistill fit` of the paper-size teacher and of its Serial k=30 student (cached teacher
targets) for --steps steps in --precision on a store of random YouTube-8M-shaped videos, then `vdistill test` of
both. A callback (``Throughput``) times the steps after the first --skip (the GPU synchronised, so queued work
counts) and reads the peak GPU memory. Prints training and inference videos/s, peak memory and the
student / teacher ratios as a markdown table, then `vdistill test` of one student checkpoint on 1 GPU and on
all visible GPUs (DDP), whose metrics must agree.

Dry run on a CPU (tiny sizes, seconds): python benchmarks/gpu_check.py --configs configs/tiny --accelerator cpu
    --precision 32-true --steps 4 --videos 96 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference import NUM_CLASSES, make_store  # noqa: E402 - a benchmark beside this one


class Throughput(Callback):
    """Videos/s of the training steps (or test batches) after the first ``skip``, and peak GPU memory, as JSON.

    Args:
        output: where to write ``{"videos_per_s", "peak_memory_gib", "steps"}``.
        skip: untimed steps first (allocator, kernel selection, cache build).
    """

    def __init__(self, output: str, skip: int = 10) -> None:
        self.output = output
        self.skip = skip
        self._videos = 0
        self._seconds = 0.0
        self._steps = 0
        self._start = 0.0

    def _begin(self) -> None:
        _synchronize()
        self._start = time.perf_counter()

    def _end(self, batch) -> None:
        _synchronize()
        self._steps += 1
        if self._steps > self.skip:
            self._seconds += time.perf_counter() - self._start
            self._videos += len(batch)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._begin()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end(batch)

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self._begin()

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(batch)

    def teardown(self, trainer, module, stage) -> None:
        if trainer.is_global_zero:
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            speed = self._videos / self._seconds if self._seconds else 0.0
            Path(self.output).write_text(json.dumps({"videos_per_s": speed, "peak_memory_gib": peak, "steps": self._steps}))


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def vdistill(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "lightning_distill.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vdistill {' '.join(args[:2])} failed:\n{done.stderr[-4000:]}")


def measured(command: str, config: Path, common: list[str], work: Path, name: str, skip: int, *extra: str) -> dict:
    """Run `vdistill command` with a ``Throughput`` callback (its first ``skip`` steps untimed); its JSON report."""
    report = work / f"{name}.json"
    vdistill(command, f"--config={config}", *common, "--trainer.callbacks+=gpu_check.Throughput",
             f"--trainer.callbacks.output={report}", f"--trainer.callbacks.skip={skip}", f"--run_dir={work / name}",
             "--overwrite=true", *extra, cwd=work)
    return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["hrnn", "netvlad", "nextvlad"])
    parser.add_argument("--configs", default=str(ROOT / "configs"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--videos", type=int, default=3200, help="videos in the training store")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--work", default="/tmp/vdistill-bench/gpu")
    args = parser.parse_args(argv)
    work = Path(args.work)
    train = make_store(work / "train.h5", args.videos, seed=0)
    test = make_store(work / "test.h5", max(args.batch * 8, 64), seed=1)
    common = [f"--data.train_files={train}", f"--data.val_files={test}", f"--data.test_files={test}",
              f"--data.num_classes={NUM_CLASSES}", f"--data.batch_size={args.batch}", "--trainer.logger=false",
              f"--trainer.precision={args.precision}", f"--trainer.accelerator={args.accelerator}",
              "--trainer.devices=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = [f"--trainer.max_steps={args.steps}", "--trainer.max_epochs=-1", "--trainer.limit_val_batches=2",
           "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1000"]
    configs = Path(args.configs).resolve()  # the commands run in the work directory
    skip = min(10, args.steps // 4)  # steps untimed first; test batches: the first one
    rows = []
    started = time.perf_counter()
    for family in args.families:
        teacher = measured("fit", configs / f"teacher_{family}.yaml", common, work, f"{family}-teacher-fit", skip, *fit)
        checkpoint = work / f"{family}-teacher-fit" / "checkpoints" / "last.ckpt"
        student = measured("fit", configs / f"student_{family}.yaml", common, work, f"{family}-student-fit", skip, *fit,
                           f"--model.init_args.teacher_checkpoint={checkpoint}")
        teacher_test = measured("test", configs / f"teacher_{family}.yaml", common, work, f"{family}-teacher-test", 1,
                                f"--ckpt_path={checkpoint}")
        student_test = measured("test", configs / f"student_{family}.yaml", common, work, f"{family}-student-test", 1,
                                f"--ckpt_path={work / f'{family}-student-fit' / 'checkpoints' / 'last.ckpt'}")
        rows.append((family, teacher, student, teacher_test, student_test))

    print(f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, {args.precision}, batch {args.batch}, "
          f"{args.steps} steps (the first {skip} untimed), {time.perf_counter() - started:.0f} s in all\n")
    print("| family | train videos/s teacher | student | student/teacher time | peak GiB teacher | student "
          "| test videos/s teacher | student | student/teacher time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, t, s, tt, st in rows:
        print(f"| {family} | {t['videos_per_s']:,.0f} | {s['videos_per_s']:,.0f} | {t['videos_per_s'] / s['videos_per_s']:.3f} "
              f"| {t['peak_memory_gib']:.1f} | {s['peak_memory_gib']:.1f} | {tt['videos_per_s']:,.0f} | "
              f"{st['videos_per_s']:,.0f} | {tt['videos_per_s'] / st['videos_per_s']:.3f} |")

    devices = torch.cuda.device_count() if args.accelerator == "gpu" else 1
    family = args.families[0]
    student_ckpt = work / f"{family}-student-fit" / "checkpoints" / "last.ckpt"
    results = {}
    for count in sorted({1, devices}):
        metrics = work / f"test-{count}-devices.json"
        strategy = ["--trainer.strategy=ddp"] if count > 1 else []
        vdistill("test", f"--config={configs / f'student_{family}.yaml'}", *common[:-4], f"--trainer.precision={args.precision}",
                 f"--trainer.accelerator={args.accelerator}", f"--trainer.devices={count}", *strategy,
                 f"--ckpt_path={student_ckpt}", f"--metrics_json={metrics}", f"--run_dir={work / f'test-{count}'}",
                 "--overwrite=true", cwd=work)
        results[count] = json.loads(metrics.read_text())
    print(f"\n`vdistill test` of the {family} student on 1 and {devices} device(s):")
    for count, metrics in results.items():
        print(f"  {count}: " + ", ".join(f"{k} {v:.6f}" for k, v in sorted(metrics.items())))
    if len(results) > 1:
        difference = max(abs(results[1][k] - results[devices][k]) for k in results[1])
        print(f"  largest difference {difference:.2e} ({'equal' if difference <= 1e-4 else 'NOT EQUAL'} to 1e-4; "
              "bf16 reductions may differ in the last digits)")


if __name__ == "__main__":
    main()
