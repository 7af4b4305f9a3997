"""Frames chosen per video (``EarlyExitModule``) against the same student reading fixed k: GAP vs frames read.

Input: a finished any-k experiment (``vdistill experiment`` with a ``train_ks`` student, e.g.
``docs/results/any-k-netvlad/experiment.yaml``). For one seed of it, this script

1. fits the early-exit gate (``vdistill fit``, ``EarlyExitModule`` with ``--stages``, default 6 then 30) on that
   seed's any-k student against its teacher's cached predictions, on the experiment's data and with the student
   cell's encoder, head, optimiser and epochs;
2. calibrates, on the VALIDATION split, one threshold per budget of average frames read: with stages (k0, k1) a
   budget b needs a fraction p = (b - k0) / (k1 - k0) of the videos to read on, so the threshold is the (1 - p)
   quantile of the gate's first-stage scores on validation videos (the test split is not looked at);
3. runs ``vdistill test`` at each threshold and reads ``test/gap``, ``test/frames_read`` and ``test/gflops``
   (every stage a video ran, the gate included) from its metrics file;
4. for reference, scores on the test split the same two stages mixed by other choices of which videos read on,
   at the same fractions: at random (mean of 5 draws); by the gate's own target computed from both stages' actual
   outputs (the videos whose prediction the second stage brings closest to the teacher's: the best a perfect gate
   could do); and by an oracle that knows the labels (the videos whose true classes gain most probability mass
   from the second stage): where the gate stands between chance and the best any selection could do;
5. prints, and writes as ``early_exit.json`` and ``gap_vs_frames_read.png`` in ``--output``, the policy's points
   beside the experiment's fixed-k rows for that seed (the any-k student, the per-k Serial student and Uniform-k at
   each k; their GFLOPs from the experiment's cost table).

    python benchmarks/early_exit.py --experiment runs/any-k-netvlad --budgets 8 10 14 18 22 --output runs/early-exit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from lightning_distill.config_files import load_config
from lightning_distill.data.samplers import AllFramesSampler, UniformSampler
from lightning_distill.evaluation.metrics import YT8MMetrics
from lightning_distill.experiment.layout import ExperimentLayout, checkpoint_path, read_json
from lightning_distill.experiment.tsne import load_datamodule
from lightning_distill.training.checkpoints import load_module
from lightning_distill.training.early_exit import EarlyExitModule, check_stages
from lightning_distill.training.losses import prediction_distance
from lightning_distill.training.teacher import TeacherModule

VDISTILL = [sys.executable, "-m", "lightning_distill.cli.main"]


def any_k_cell(layout: ExperimentLayout, seed: int) -> tuple[str, dict[str, Any]]:
    """The cell that trained the seed's any-k student, and its config."""
    for config_path in sorted((layout.root / "cells").glob(f"*-s{seed}/config.yaml")):
        config = load_config(config_path)
        init_args = config["model"]["init_args"]
        if str((init_args.get("train_sampler") or {}).get("class_path", "")).endswith("AnyKSampler"):
            if layout.checkpoint(config_path.parent.name).is_file():
                return config_path.parent.name, config
    raise SystemExit(f"{layout.root}: no trained any-k student of seed {seed} (a grid student with train_ks)")


def gate_config(cell: dict[str, Any], student: Path, stages: list[int]) -> dict[str, Any]:
    """A ``vdistill fit`` config for the gate: the student cell's model parts, data and epochs."""
    student_args = cell["model"]["init_args"]
    trainer = {key: value for key, value in cell["trainer"].items() if key not in ("callbacks", "logger")}
    return {
        "seed_everything": cell.get("seed_everything", 0),
        "trainer": {
            **trainer,
            "logger": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "best"}}
            ],
        },
        "model": {
            "class_path": "lightning_distill.training.early_exit.EarlyExitModule",
            "init_args": {
                "encoder": student_args["encoder"],
                "head": student_args["head"],
                "optimizer": student_args["optimizer"],
                "lr_scheduler": student_args.get("lr_scheduler"),
                "init_from": str(student),
                "teacher_checkpoint": student_args["teacher_checkpoint"],
                "stages": stages,
            },
        },
        "data": cell["data"],
    }


def run(args: list[str]) -> None:
    """Run ``vdistill`` with ``args``; stop with its output if it fails."""
    done = subprocess.run([*VDISTILL, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vdistill {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def calibrated_thresholds(config: Path, checkpoint: Path, stages: list[int], budgets: list[float]) -> list[float]:
    """Per budget, the threshold under which validation videos read ``budget`` frames on average."""
    module = load_module(EarlyExitModule, checkpoint).eval()
    data = load_datamodule(config)
    data.views = {"student": UniformSampler(stages[0])}
    data.setup("validate")
    scores = []
    with torch.no_grad():
        for batch in data.val_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            scores.append(module.gate(module(batch.views["student"]).probabilities, 0))
    scores = torch.cat(scores).numpy()
    fractions = [(budget - stages[0]) / (stages[1] - stages[0]) for budget in budgets]
    return [float(np.quantile(scores, 1 - p)) for p in fractions]


def reference_mixtures(config: Path, checkpoint: Path, stages: list[int], fractions: list[float]) -> list[dict]:
    """Test GAP of the two stages' predictions mixed at each fraction: random videos, the gate's target's choice
    (from both stages' actual outputs) and the label oracle's."""
    module = load_module(EarlyExitModule, checkpoint).eval()
    teacher = load_module(TeacherModule, module.teacher_checkpoint).eval()
    data = load_datamodule(config)
    data.views = {"first": UniformSampler(stages[0]), "second": UniformSampler(stages[1]), "all": AllFramesSampler()}
    data.setup("test")
    first, second, targets, labels = [], [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            first.append(module(batch.views["first"]).probabilities)
            second.append(module(batch.views["second"]).probabilities)
            targets.append(teacher(batch.views["all"]).probabilities)
            labels.append(batch.labels)
    first, second, targets, labels = torch.cat(first), torch.cat(second), torch.cat(targets), torch.cat(labels)
    target_gain = prediction_distance(targets, first, module.distance) - prediction_distance(
        targets, second, module.distance
    )

    def gap(reading_on: Tensor) -> float:
        mixed = first.clone()
        mixed[reading_on] = second[reading_on]
        metric = YT8MMetrics(labels.shape[1])
        metric.update(mixed, labels)
        return float(metric.compute()["gap"])

    change = second - first
    oracle_gain = (change * labels).sum(dim=1) - (change * (1 - labels)).sum(dim=1)
    generator = torch.Generator().manual_seed(0)
    references = []
    for fraction in fractions:
        count = round(fraction * len(labels))
        draws = [gap(torch.randperm(len(labels), generator=generator)[:count]) for _ in range(5)]
        references.append({"random": float(np.mean(draws)), "gate_target": gap(target_gain.topk(count).indices),
                           "oracle": gap(oracle_gain.topk(count).indices)})
    return references


def fixed_k_rows(layout: ExperimentLayout, seed: int) -> dict[str, list[dict[str, float]]]:
    """Method -> [{frames, gap, gflops}] of the experiment's rows at each k, for ``seed``."""
    report = read_json(layout.report_json)
    gflops = {c["frames"]: c["gflops_per_video"] for c in report["cost"]}
    rows: dict[str, list[dict[str, float]]] = {}
    for row in report["rows"]:
        for k, entry in row["results"].items():
            cell = next((name for name in (entry or {}).get("cells", []) if name.endswith(f"-s{seed}")), None)
            if cell is None:
                continue
            metrics = read_json(layout.test_metrics(cell))
            gap = metrics.get("test/gap", metrics.get("test/student/gap"))
            rows.setdefault(row["method"], []).append({"frames": int(k), "gap": gap, "gflops": gflops.get(int(k))})
    return rows


def plot(points: list[dict[str, float]], rows: dict[str, list[dict[str, float]]], path: Path) -> None:
    """GAP against average frames read: the policy's curve over the fixed-k rows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method, entries in rows.items():
        entries = sorted(entries, key=lambda e: e["frames"])
        axis.plot([e["frames"] for e in entries], [e["gap"] for e in entries], marker="o", label=f"{method} (fixed k)")
    axis.plot([p["frames_read"] for p in points], [p["gap"] for p in points], marker="s", color="black",
              label="Early exit (frames per video)")
    axis.set_xlabel("average frames read per video")
    axis.set_ylabel("test GAP")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, required=True, help="output folder of a finished any-k experiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", type=int, nargs=2, default=[6, 30])
    parser.add_argument("--budgets", type=float, nargs="+", default=[8, 10, 14, 18, 22])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    check_stages(args.stages)
    if any(not args.stages[0] < b < args.stages[1] for b in args.budgets):
        raise SystemExit(f"budgets {args.budgets} must lie strictly between the stages {args.stages}")
    layout = ExperimentLayout(args.experiment.resolve())
    cell, cell_config = any_k_cell(layout, args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    config = args.output / "gate.yaml"
    config.write_text(yaml.safe_dump(gate_config(cell_config, layout.checkpoint(cell), args.stages), sort_keys=False))
    fit_dir = args.output / "gate-fit"
    if not checkpoint_path(fit_dir).is_file():
        run(["fit", "--config", str(config), "--run_dir", str(fit_dir), "--overwrite", "true"])
    thresholds = calibrated_thresholds(config, checkpoint_path(fit_dir), args.stages, args.budgets)
    fractions = [(budget - args.stages[0]) / (args.stages[1] - args.stages[0]) for budget in args.budgets]
    references = reference_mixtures(config, checkpoint_path(fit_dir), args.stages, fractions)
    points = []
    for budget, threshold, reference in zip(args.budgets, thresholds, references):
        test_dir = args.output / f"test-{budget:g}"
        run(["test", "--config", str(config), "--ckpt_path", str(checkpoint_path(fit_dir)), "--run_dir", str(test_dir),
             "--overwrite", "true", f"--model.init_args.threshold={threshold}"])
        metrics = read_json(test_dir / "test_metrics.json")
        points.append({"budget": budget, "threshold": threshold, "gap": metrics["test/gap"],
                       "frames_read": metrics["test/frames_read"], "gflops": metrics["test/gflops"],
                       "random_gap": reference["random"], "gate_target_gap": reference["gate_target"],
                       "oracle_gap": reference["oracle"]})
    rows = fixed_k_rows(layout, args.seed)
    (args.output / "early_exit.json").write_text(json.dumps({"student_cell": cell, "stages": args.stages,
                                                             "policy": points, "fixed_k": rows}, indent=2))
    plot(points, rows, args.output / "gap_vs_frames_read.png")
    print(f"Early exit on {cell} (stages {args.stages[0]} -> {args.stages[1]}), thresholds from validation:")
    print(f"{'budget':>8} {'frames read':>12} {'GFLOPs':>9} {'test GAP':>9} {'random':>8} {'target':>8} {'oracle':>8}")
    for p in points:
        print(f"{p['budget']:>8g} {p['frames_read']:>12.2f} {p['gflops']:>9.4f} {p['gap']:>9.4f} "
              f"{p['random_gap']:>8.4f} {p['gate_target_gap']:>8.4f} {p['oracle_gap']:>8.4f}")
    print("Fixed k (the experiment's cells of this seed):")
    for method, entries in rows.items():
        ordered = sorted(entries, key=lambda e: e["frames"])
        print(f"  {method}: " + ", ".join(f"k={e['frames']} {e['gap']:.4f}" for e in ordered))


if __name__ == "__main__":
    main()
