"""What a Serial student's fit costs next to its teacher's, with the teacher's targets cached and live.

Whole `vdistill fit` processes, start-up included, side by side in one run (ratios matter; machines are noisy):
the teacher; the Serial student with cached targets, cold (the first student builds the cache) and warm (a later
student of the same teacher reuses it); the student with the live teacher (`teacher_targets: live`, the old way).
The data (stores) is prepared before any timing. Prints wall seconds per fit (median of --repeats) and the ratio
to the teacher's fit, and the cache's build time from its own record.

Default: the tiny H-RNN recipe (configs/tiny, 4 epochs) on the default synthetic data set.

    python benchmarks/serial_cost.py
    python benchmarks/serial_cost.py --configs configs --family nextvlad --trainer.max_steps 300 ...  # other sizes

Extra arguments after the known ones go to every `vdistill fit` (e.g. --trainer.accelerator gpu).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import h5py
from timing import print_median_table, wall_seconds

ROOT = Path(__file__).resolve().parents[1]


def vdistill(*args: str, cwd: Path) -> float:
    """Run `vdistill args` as a user would; returns its wall time in seconds."""
    return wall_seconds([sys.executable, "-m", "lightning_distill.cli.main", *args], cwd=cwd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=str(ROOT / "configs" / "tiny"), help="folder of teacher_/student_ configs")
    parser.add_argument("--family", default="hrnn")
    parser.add_argument("--data", default="/tmp/vdistill-bench/serial/data", help="synthetic data (made if missing)")
    parser.add_argument("--repeats", type=int, default=1, help="fits per variant; the median is shown")
    parser.add_argument("--work", default="/tmp/vdistill-bench/serial/work")
    args, extra = parser.parse_known_args(argv)
    data, work = Path(args.data), Path(args.work)
    configs = Path(args.configs).resolve()  # the commands run in the work directory
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if not (data / "train0000.tfrecord").exists():
        vdistill("synth", f"--output={data}", cwd=work)
    files = [f"--data.train_files={data}/train*.tfrecord", f"--data.val_files={data}/validate*.tfrecord",
             f"--data.test_files={data}/test*.tfrecord", f"--data.store_dir={data}/stores", "--data.num_classes=16",
             "--trainer.logger=false", "--trainer.enable_progress_bar=false", *extra]
    teacher_config = f"--config={configs / f'teacher_{args.family}.yaml'}"
    student_config = f"--config={configs / f'student_{args.family}.yaml'}"
    # Conversion happens once, before any timed fit (a fit converts missing stores itself).
    vdistill("fit", teacher_config, *files, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
             f"--run_dir={work / 'prepare'}", cwd=work)

    seconds: dict[str, list[float]] = {"teacher": [], "student, cached (cold)": [], "student, cached (warm)": [],
                                       "student, live teacher": []}
    build_seconds = []
    for repeat in range(args.repeats):
        teacher_dir = work / f"teacher-{repeat}"
        seconds["teacher"].append(vdistill("fit", teacher_config, *files, f"--run_dir={teacher_dir}", cwd=work))
        checkpoint = f"--model.init_args.teacher_checkpoint={teacher_dir / 'checkpoints' / 'best.ckpt'}"
        for name, slug, options in (("student, cached (cold)", "cold", []), ("student, cached (warm)", "warm", []),
                                    ("student, live teacher", "live", ["--model.init_args.teacher_targets=live"])):
            seconds[name].append(vdistill("fit", student_config, *files, checkpoint, *options,
                                          f"--run_dir={work / f'student-{slug}-{repeat}'}", cwd=work))
            if slug == "cold":
                (cache,) = (data / "stores").glob("train.targets-*.h5")  # made by this teacher, this repeat
                with h5py.File(cache, "r") as f:
                    build_seconds.append(float(f.attrs["build_seconds"]))
        for cache in (data / "stores").glob("train.targets-*.h5*"):
            cache.unlink()  # the next repeat's teacher is a new checkpoint: a new cache anyway
    print(f"{configs.name}/{args.family}: whole `vdistill fit` processes, median of {args.repeats}\n")
    print_median_table(seconds, "teacher", "fit")
    print(f"\nteacher-target cache build (inside the cold student's fit): {statistics.median(build_seconds):.1f} s")
    print(json.dumps({name: values for name, values in seconds.items()}))


if __name__ == "__main__":
    main()
