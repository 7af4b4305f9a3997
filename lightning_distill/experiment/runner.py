"""Running a grid: data once, every unfinished cell as ordinary ``vdistill fit``/``test`` processes (in parallel,
serial students after their teacher), the cost profiles, then the report.

A cell counts as finished when its ``done.json`` exists and records the fingerprint of the cell's current
configs, so rerunning the same command after a kill (or after adding cells to the grid) trains only what is
missing, and a cell whose config changed is trained again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from lightning_distill.data.synthetic import generate
from lightning_distill.errors import ConfigError, VDistillError
from lightning_distill.config_files import dump_yaml
from lightning_distill.experiment.cell_config import FitRun, cell_configs
from lightning_distill.experiment.grid import SELECTIONS, TEACHER_METHOD, Cell, Grid, expand_grid
from lightning_distill.atomic_files import write_json_atomic
from lightning_distill.experiment.layout import ExperimentLayout, read_json
from lightning_distill.experiment.report import CostEntry, log_to_wandb, table_section, write_report
from lightning_distill.experiment.tsne import plot_representations

console = Console()

# The glob of each split's shards that ``generate`` writes.
SYNTHETIC_FILES = {"train_files": "train*.tfrecord", "val_files": "validate*.tfrecord", "test_files": "test*.tfrecord"}


# `vdistill` in a fresh process of this interpreter (works without the console script on PATH).
VDISTILL = [sys.executable, "-m", "lightning_distill.cli.main"]

# Which cells start first when several are ready (lower first).
START_ORDER = {"teacher": 0, **{role: 1 for role in SELECTIONS.values()}, "serial": 1, "parallel": 2, "baseline": 3}


@dataclass(frozen=True)
class CellRun:
    """A cell ready to run: its configs are on disk.

    Attributes:
        cell: the grid cell.
        fits: the fits in order (the last is the cell's ``config.yaml``, whose checkpoint is tested).
        fingerprint: hash of the configs (and the fingerprints of the cells it waits for), recorded in ``done.json``.
    """

    cell: Cell
    fits: list[FitRun]
    fingerprint: str


@dataclass(frozen=True)
class Slot:
    """Where one cell runs at a time: environment variables and trainer flags added to its commands."""

    env: dict[str, str]
    flags: list[str]


def run_experiment(
    grid: Grid, output: str, *, workers: int = 1, devices: str | None = None, command: str = ""
) -> dict[str, Any]:
    """Train every unfinished cell of ``grid``, profile the costs and write the report; return the report.

    Args:
        grid: the grid.
        output: the experiment directory (created; reused to resume).
        workers: cells run at once on CPU.
        devices: GPU ids ("0,1" or "all"): one cell per GPU at a time; None runs on CPU.
        command: how the user ran the experiment, quoted in the report.

    Raises:
        VDistillError: when some cells failed (after the report of the others is written).
    """
    cells = expand_grid(grid)
    slots = make_slots(workers, devices)
    layout = ExperimentLayout(Path(output).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    data = prepare_data(grid, layout)
    runs = write_cell_configs(cells, grid, layout, data)
    failed = run_cells(runs, layout, slots)
    costs = profile_costs(grid, cells, runs, layout, slots[0])
    tsne = plot_representations(layout, grid, cells) if grid.tsne_videos else None
    report = write_report(layout, grid, cells, costs, command, tsne)
    log_to_wandb(layout, report, name=f"experiment/{layout.root.name}")
    # The teacher, baselines and students side by side, so the result is visible without opening a file.
    console.print(Markdown(table_section(layout.report_md.read_text())))
    console.print(f"report: {layout.report_md} ({len(cells) - len(report['missing'])}/{len(cells)} cells finished)")
    if failed:
        raise VDistillError(
            f"{len(failed)} cell(s) failed: {', '.join(failed)}; read <cell>/log.txt under {layout.root / 'cells'}, "
            "fix, and rerun the same command to resume"
        )
    return report


def make_slots(workers: int, devices: str | None) -> list[Slot]:
    """One slot per GPU listed in ``devices``, else ``workers`` CPU slots sharing the cores evenly."""
    if devices is None:
        if workers < 1:
            raise ConfigError(f"workers={workers}: run at least 1 cell at a time")
        # Without a cap every process would start a thread per core and the processes would fight for them.
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)}
        return [Slot(env, ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]) for _ in range(workers)]
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    if ids == ["all"]:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if not ids or not all(i.isdigit() for i in ids):
        raise ConfigError(f"devices={devices!r}: give GPU ids such as '0,1', or 'all' (with a GPU present)")
    flags = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    return [Slot({"CUDA_VISIBLE_DEVICES": i}, flags) for i in ids]


def prepare_data(grid: Grid, layout: ExperimentLayout) -> dict[str, Any]:
    """The data module arguments every cell shares; generates the synthetic data set first if the grid asks.

    Synthetic data is generated once: ``<output>/data/synthetic.json`` records the arguments it was made with,
    and only other arguments regenerate it.
    """
    if grid.synthetic is None:
        return dict(grid.data)
    marker = layout.data_dir / "synthetic.json"
    if not marker.is_file() or read_json(marker) != grid.synthetic:
        console.print(f"generating synthetic data into {layout.data_dir}")
        shutil.rmtree(layout.data_dir, ignore_errors=True)
        try:
            generate(layout.data_dir, **grid.synthetic)
        except TypeError as error:
            raise ConfigError(f"synthetic: {error}; see `vdistill synth --help` for the arguments") from None
        write_json_atomic(marker, grid.synthetic)
    # The records are in the 2018 format, whose vocabulary (3862) the data module would assume otherwise.
    num_classes = grid.synthetic.get("num_classes", inspect.signature(generate).parameters["num_classes"].default)
    files = {key: str(layout.data_dir / pattern) for key, pattern in SYNTHETIC_FILES.items()}
    return {**grid.data, **files, "store_dir": str(layout.store_dir), "num_classes": num_classes}


def write_cell_configs(cells: list[Cell], grid: Grid, layout: ExperimentLayout, data: dict[str, Any]) -> list[CellRun]:
    """Save every unfinished cell's configs (clearing what a killed run left) and return all cells' runs."""
    runs: dict[str, CellRun] = {}
    synthetic = json.dumps(grid.synthetic, sort_keys=True)
    for cell in cells:
        fits = cell_configs(cell, grid, layout, data)
        texts = [dump_yaml(fit.config) for fit in fits]
        # [""] for a cell that waits for none keeps the fingerprints (and so the finished cells) of earlier versions.
        upstream = [runs[name].fingerprint for name in cell.waits_for] or [""]
        fingerprint = hashlib.sha256("\n".join([*texts, *upstream, synthetic]).encode()).hexdigest()
        run = CellRun(cell, fits, fingerprint)
        runs[cell.name] = run
        if is_finished(run, layout):
            continue
        shutil.rmtree(layout.cell_dir(cell.name), ignore_errors=True)
        for fit, text in zip(fits, texts):
            fit.config_path.parent.mkdir(parents=True, exist_ok=True)
            fit.config_path.write_text(text)
    return list(runs.values())


def is_finished(run: CellRun, layout: ExperimentLayout) -> bool:
    """Whether the cell finished with its current configs."""
    done = layout.done(run.cell.name)
    return done.is_file() and read_json(done).get("fingerprint") == run.fingerprint


def cell_commands(run: CellRun, layout: ExperimentLayout) -> list[list[str]]:
    """The ``vdistill`` arguments that train and test the cell, in order (only the test when another cell trains
    its model: an any-k student's cell at a later k, a baseline of the teacher's weights)."""
    name = run.cell.name
    fits = [["fit", "--config", str(fit.config_path), "--run_dir", str(fit.run_dir)] for fit in run.fits]
    test = [
        "test",
        "--config", str(layout.config(name)),
        "--ckpt_path", str(layout.checkpoint(run.cell.trained_by or name)),
        "--metrics_json", str(layout.test_metrics(name)),
        "--run_dir", str(layout.test_dir(name)),
    ]  # fmt: skip
    return [test] if run.cell.trained_by else [*fits, test]


def run_cells(runs: list[CellRun], layout: ExperimentLayout, slots: list[Slot]) -> list[str]:
    """Run the unfinished cells, at most one per slot at a time, each only after the cells it waits for (its
    teacher, the cell that trains it) have finished.

    The console shows one progress line (cells done, running, left, and an estimate of the time left from the
    cells finished so far) and one line per finished or failed cell; each cell's commands and output go to its
    ``log.txt``.

    Returns the names of the cells that failed, or were skipped because a cell they wait for failed.
    """
    state = {run.cell.name: "done" if is_finished(run, layout) else "pending" for run in runs}
    # The critical path first (teachers, then the Serial students waiting for them), then the longest cells
    # (Parallel ones train two models), the cheap baselines last to fill the gaps.
    pending = [run for run in runs if state[run.cell.name] == "pending"]
    pending.sort(key=lambda run: START_ORDER[run.cell.role])
    skipped = len(runs) - len(pending)
    if skipped:
        console.print(f"{skipped} cell(s) already finished: skipped")
    free = list(slots)
    running: dict[Future[bool], tuple[CellRun, Slot]] = {}
    progress = CellProgress(len(pending), len(slots))
    with ThreadPoolExecutor(max_workers=len(slots)) as pool, progress:
        while pending or running:
            for run in list(pending):
                upstream = [state[name] for name in run.cell.waits_for]
                if "failed" in upstream:
                    state[run.cell.name] = "failed"
                    pending.remove(run)
                    failed = ", ".join(name for name in run.cell.waits_for if state[name] == "failed")
                    progress.ended(run.cell.name, f"[red]skipped[/red] {run.cell.name}: {failed} failed", 0.0)
                elif all(status == "done" for status in upstream) and free:
                    slot = free.pop(0)
                    running[pool.submit(execute_cell, run, layout, slot)] = (run, slot)
                    pending.remove(run)
                    progress.started(run.cell.name)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run, slot = running.pop(future)
                free.append(slot)
                ok, seconds = future.result()
                state[run.cell.name] = "done" if ok else "failed"
                log = layout.cell_dir(run.cell.name) / "log.txt"
                line = f"[green]{run.cell.name}[/green] finished in {seconds:.0f} s" if ok else (
                    f"[red]{run.cell.name} failed[/red]: see {log}"
                )
                progress.ended(run.cell.name, line, seconds)
    return [name for name, status in state.items() if status == "failed"]


class CellProgress:
    """One rich progress line for the cells of a run: done / running / left, and the estimated time left.

    Args:
        total: cells to run.
        slots: cells run at once (the estimate divides the remaining cells' time by it).
    """

    def __init__(self, total: int, slots: int) -> None:
        self.total, self.slots = total, slots
        self.running: list[str] = []
        self.seconds: list[float] = []
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
            console=console, transient=True,
        )
        self._task = self._progress.add_task("cells", total=total, eta="")

    def __enter__(self) -> CellProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def started(self, name: str) -> None:
        self.running.append(name)
        self._update()

    def ended(self, name: str, line: str, seconds: float) -> None:
        if name in self.running:
            self.running.remove(name)
            self.seconds.append(seconds)
        self._progress.console.print(line, highlight=False, soft_wrap=True)
        self._progress.advance(self._task)
        self._update()

    def _update(self) -> None:
        done = int(self._progress.tasks[0].completed)
        left = self.total - done - len(self.running)
        eta = ""
        if self.seconds:
            remaining = (left + len(self.running) / 2) * statistics.mean(self.seconds) / self.slots
            eta = f"~{remaining / 60:.0f} min left"
        description = f"cells: {len(self.running)} running ({', '.join(self.running)}), {left} waiting"
        self._progress.update(self._task, description=description, eta=eta)


def execute_cell(run: CellRun, layout: ExperimentLayout, slot: Slot) -> tuple[bool, float]:
    """Fit and test one cell in subprocesses (commands and output to ``<cell>/log.txt``); write ``done.json``
    last. Returns whether it succeeded and its seconds."""
    name = run.cell.name
    log_path = layout.cell_dir(name) / "log.txt"
    commands = [[*args, *slot.flags] for args in cell_commands(run, layout)]
    printed = [shown_command(args, slot) for args in commands]
    start = time.monotonic()
    # Logs are files: no colours (rich sees no terminal by itself), and W&B's coloured banner left out (each
    # command's own summary names its W&B run).
    env = {**os.environ, **slot.env, "NO_COLOR": "1", "WANDB_SILENT": "true"}
    with open(log_path, "a") as log:
        for args in commands:
            log.write(f"$ {shown_command(args, slot)}\n")
            log.flush()
            process = subprocess.run([*VDISTILL, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
            if process.returncode != 0:
                log.write(f"exit {process.returncode}\n")
                return False, time.monotonic() - start
    seconds = time.monotonic() - start
    done = {"cell": name, "fingerprint": run.fingerprint, "seconds": seconds, "commands": printed}
    write_json_atomic(layout.done(name), done)
    return True, seconds


def shown_command(args: list[str], slot: Slot) -> str:
    """The shell command a person would type to run ``args`` as this slot does."""
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in slot.env.items())
    return f"{env} vdistill {shlex.join(args)}".strip()


def profile_costs(
    grid: Grid, cells: list[Cell], runs: list[CellRun], layout: ExperimentLayout, slot: Slot
) -> list[CostEntry]:
    """``vdistill profile`` the teacher and one k-frame model per k (a student's config where the grid has one),
    one at a time after training so that the measured speed is not shared with other processes.

    A profile made from the same config is reused; a failed profile is left out of the cost table.
    """
    by_name = {run.cell.name: run for run in runs}
    chosen = {"teacher": next(c for c in cells if c.role == "teacher")}
    for k in grid.ks:
        at_k = [c for c in cells if c.k == k and c.seed == grid.seeds[0]]
        # A student reading Uniform frames: a selection's cost is logged by its own cells (test/selection_*).
        chosen[f"k{k}"] = next((c for c in at_k if c.variant is not None and c.scorer is None), at_k[0])
    costs = []
    for key, cell in chosen.items():
        run, path = by_name[cell.name], layout.cost(grid.family, key)
        if not path.is_file() or read_json(path).get("fingerprint") != run.fingerprint:
            frames = [] if cell.k is None else ["--frames", str(cell.k)]
            tmp = path.with_name(f".{path.name}.tmp")
            args = ["profile", "--config", str(run.fits[-1].config_path), *frames, "--output", str(tmp)]
            args += ["--trainer.logger", "false", "--run_dir", str(path.with_suffix("")), "--overwrite", "true"]
            args += slot.flags
            process = subprocess.run([*VDISTILL, *args], env={**os.environ, **slot.env}, capture_output=True, text=True)
            if process.returncode != 0 or not tmp.is_file():
                failure = f"[red]profile of {key} failed[/red]: {shown_command(args, slot)}\n{process.stderr[-2000:]}"
                console.print(failure, highlight=False)
                continue
            write_json_atomic(path, {"fingerprint": run.fingerprint, "profile": read_json(tmp)})
            tmp.unlink()
        profile = read_json(path)["profile"]
        model = TEACHER_METHOD if cell.k is None else f"k={cell.k}"
        costs.append(CostEntry(model, int(profile["num_frames"]), profile))
    return costs

