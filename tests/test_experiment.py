"""``vdistill experiment``: grid expansion and validation, the report built from cell files, and a miniature grid
run end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_distill.cli.experiment_command import experiment
from lightning_distill.cli.main import main
from lightning_distill.errors import ConfigError
from lightning_distill.config_files import deep_merge, load_config
from lightning_distill.experiment.cell_config import cell_configs
from lightning_distill.experiment.grid import (
    Baseline, Grid, StudentVariant, expand_grid, ordinal, row_labels, scorer_method,
)
from lightning_distill.atomic_files import write_json_atomic
from lightning_distill.experiment import runner
from lightning_distill.experiment.layout import ExperimentLayout
from lightning_distill.experiment.report import CostEntry, method_series, write_report
from lightning_distill.experiment.runner import CellRun, Slot, cell_commands, run_cells

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = {"train_files": "t/*.tfrecord", "val_files": "v/*.tfrecord", "test_files": "x/*.tfrecord"}


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A configs directory holding (empty) config parts of every role and of family ``hrnn``."""
    directory = tmp_path / "configs"
    for part in ("role/teacher", "role/baseline", "role/serial", "role/parallel", "family/hrnn"):
        (directory / part).parent.mkdir(parents=True, exist_ok=True)
        (directory / f"{part}.yaml").write_text("{}\n")
    return directory


def make_grid(configs: Path, **changes) -> Grid:
    fields = dict(
        family="hrnn",
        configs=str(configs),
        ks=[6, 30],
        baselines=["uniform", "last"],
        students=[StudentVariant("serial", ["rep", "pred", "ce"]), StudentVariant("parallel", ["rep", "ce"])],
        seeds=[0, 1],
        data=dict(FILES),
    )
    return Grid(**{**fields, **changes})


def test_expansion_has_one_teacher_per_seed_and_every_method_at_every_k(configs):
    grid = make_grid(configs)
    cells = expand_grid(grid)
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 * (1 + 2 * (2 + 2))
    for seed in grid.seeds:
        seeded = [c for c in cells if c.seed == seed]
        assert [c.role for c in seeded].count("teacher") == 1 and seeded[0].role == "teacher"
        for method in row_labels(grid):
            assert sorted(c.k for c in seeded if c.method == method) == grid.ks
    for cell in cells:
        # Serial students distil from their own seed's teacher, which runs before them; nothing else waits.
        if cell.role == "serial":
            assert cell.teacher == f"teacher-s{cell.seed}" and names.index(cell.teacher) < names.index(cell.name)
        else:
            assert cell.teacher is None
        if cell.role in ("serial", "parallel"):
            assert cell.sampler == "uniform"
        assert all(path.is_file() for path in cell.base_configs)


def test_rows_follow_table_1_order(configs):
    assert row_labels(make_grid(configs)) == [
        "Uniform-k",
        "Last-k",
        "Serial L_rep, L_pred, L_CE",
        "Parallel L_rep, L_CE",
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"baselines": ["uniform", "best"]}, "unknown baselines"),
        ({"ks": [6, 0]}, "k is a frame count"),
        ({"ks": []}, "no ks"),
        ({"ks": [6, 6]}, "twice"),
        ({"seeds": []}, "no seeds"),
        ({"students": [StudentVariant("sideways", ["ce"])]}, "mode"),
        ({"students": [StudentVariant("serial", ["rep", "kd"])]}, "unknown loss terms"),
        ({"students": [StudentVariant("serial", [])]}, "no losses"),
        ({"students": [StudentVariant("serial", ["rep"], {"ce": 1.0})]}, "not among its losses"),
        ({"family": "lstm"}, "does not exist"),
        ({"synthetic": {}}, "both synthetic and data"),
        ({"tsne_videos": -1}, "negative"),
        ({"students": [StudentVariant("parallel", ["ce"], train_ks=[6, 30])]}, "trained Serial"),
        ({"students": [StudentVariant("serial", ["ce"], train_ks=[6, 0])]}, "train_ks"),
        ({"students": [StudentVariant("parallel", ["pred", "ce"], teachers=["nextvlad-tiny"])]}, "distilled Serial"),
        ({"students": [StudentVariant("serial", ["pred"], teachers=["hrnn-tiny", "hrnn-tiny"])]}, "each family once"),
        ({"students": [StudentVariant("serial", ["pred"], teachers=["lstm"])]}, "family lstm does not exist"),
        ({"students": [StudentVariant("serial", ["pred"], selection="oracle")]}, "'oracle' of serial-pred-oracle"),
        ({"students": [StudentVariant("parallel", ["pred"], selection="skim")]}, "use mode serial"),
        ({"baselines": ["uniform", Baseline("uniform", "best")]}, r"unknown baselines \['best'\]"),
        ({"baselines": ["uniform", Baseline("uniform")]}, "twice"),
        ({"students": [StudentVariant("serial", ["pred"], train_selection="oracle")]}, "'oracle' of serial-pred"),
        ({"students": [StudentVariant("serial", ["pred"], train_selection="random", train_ks=[6])]}, "keep one"),
        ({"baselines": [Baseline("uniform", weights="student")]}, "weights 'student': choose from scratch, teacher"),
        ({"baselines": [Baseline("uniform", "random", weights="teacher")]}, "not trained on k frames: drop one"),
        ({"students": [StudentVariant("parallel", ["ce"], stop_on="teacher/gap")]}, "not a validation metric"),
        ({"students": [StudentVariant("parallel", ["ce"], stop_on="val/teacher/gap")]}, "set patience"),
    ],
)
def test_invalid_grids_raise_config_error(configs, changes, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid(make_grid(configs, **changes))


def test_a_relative_configs_folder_missing_here_says_where_it_was_looked_up(configs, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match="looked up from the working directory .*elsewhere: run from the project"):
        expand_grid(make_grid(Path("configs")))
    monkeypatch.chdir(tmp_path)
    assert expand_grid(make_grid(Path("configs")))  # the same grid, run from where its configs are


@pytest.mark.parametrize("relative", [False, True])
def test_a_configs_folder_that_is_there_needs_no_hint(configs, tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"check family and configs$"):
        expand_grid(make_grid(Path("configs") if relative else configs, family="lstm"))


def fabricate_cell(layout: ExperimentLayout, name: str, metrics: dict[str, float], curve: Sequence[dict] = ()) -> None:
    """The files a finished cell leaves behind: test metrics, a CSV log of validation metrics, done.json."""
    write_json_atomic(layout.test_metrics(name), metrics)
    if curve:
        keys = sorted({key for row in curve for key in row})
        lines = [",".join(keys)] + [",".join(str(row.get(key, "")) for key in keys) for row in curve]
        layout.curves(name).parent.mkdir(parents=True, exist_ok=True)
        layout.curves(name).write_text("\n".join(lines) + "\n")
    write_json_atomic(layout.done(name), {"cell": name})


def test_report_numbers_come_from_finished_cells_and_missing_cells_show_as_dashes(configs, tmp_path):
    grid = make_grid(configs, seeds=[0])
    cells = expand_grid(grid)
    layout = ExperimentLayout(tmp_path / "run")
    unfinished = "uniform-k30-s0"
    for i, cell in enumerate(cells):
        if cell.name == unfinished:
            continue
        if cell.role == "parallel":
            metrics = {
                "test/student/gap": 0.5 + i / 100,
                "test/student/map_all_classes": 0.2 + i / 100,
                "test/teacher/gap": 0.9,
                "test/teacher/map_all_classes": 0.4,
            }
            curve = [
                {"epoch": e, "step": e, "val/teacher/gap": 0.6 + e / 10, "val/student/gap": 0.5 + e / 10}
                for e in range(3)
            ]
        else:
            metrics = {"test/gap": 0.5 + i / 100, "test/map_all_classes": 0.2 + i / 100, "test/map": 0.3}
            curve = [{"epoch": e, "step": e, "val/gap": 0.55 + e / 10} for e in range(3)]
        fabricate_cell(layout, cell.name, metrics, curve)
    costs = [
        CostEntry("Teacher", 300, {"params": 10, "macs_per_video": 5e8, "flops_per_video": 1e9, "videos_per_s": 50.0}),
        CostEntry("k=6", 6, {"params": 10, "macs_per_video": 1e7, "flops_per_video": 2e7, "videos_per_s": 900.0}),
        CostEntry("k=30", 30, {"params": 10, "macs_per_video": 5e7, "flops_per_video": 1e8, "videos_per_s": 400.0}),
    ]

    report = write_report(layout, grid, cells, costs, command="vdistill experiment --config g.yaml --output run")

    assert json.loads(layout.report_json.read_text()) == report
    assert report["missing"] == [unfinished]
    assert [row["method"] for row in report["rows"]] == row_labels(grid)
    for row in report["rows"]:
        assert list(row["results"]) == ["6", "30"]
        for k, entry in row["results"].items():
            if entry is None:
                assert (row["method"], k) == ("Uniform-k", "30")
                continue
            (name,) = entry["cells"]
            stored = json.loads(layout.test_metrics(name).read_text())
            prefix = "test/student/" if "test/student/gap" in stored else "test/"
            assert entry["gap"] == stored[prefix + "gap"]
            assert entry["map_all_classes"] == stored[prefix + "map_all_classes"]
    assert report["teacher"]["gap"] == json.loads(layout.test_metrics("teacher-s0").read_text())["test/gap"]
    assert [c["gflops_per_video"] for c in report["cost"]] == [1.0, 0.02, 0.1]
    assert all(series.std is None for series in method_series(report, {6: 6.0, 30: 30.0}))  # one seed

    markdown = layout.report_md.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Model |"))
    assert header.count("GAP") == header.count("mAP") == len(grid.ks)
    uniform_row = next(line for line in markdown.splitlines() if line.startswith("| Uniform-k |"))
    assert uniform_row.count("—") == 2  # k=30 GAP and mAP
    assert unfinished in markdown.split("## Missing cells")[1]
    assert set(report["figures"].values()) == {"gap_vs_k.png", "gap_vs_gflops.png", "training_curves.png"}
    for file in report["figures"].values():
        assert (layout.root / file).read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({file})" in markdown


def test_seeds_are_averaged_only_when_all_have_finished(configs, tmp_path):
    grid = make_grid(configs, ks=[6], baselines=["uniform"], students=[], seeds=[0, 1])
    cells = expand_grid(grid)
    layout = ExperimentLayout(tmp_path / "run")
    fabricate_cell(layout, "uniform-k6-s0", {"test/gap": 0.5, "test/map_all_classes": 0.2})
    report = write_report(layout, grid, cells, [], command="c")
    assert report["rows"][0]["results"]["6"] is None
    fabricate_cell(layout, "uniform-k6-s1", {"test/gap": 0.7, "test/map_all_classes": 0.4})
    report = write_report(layout, grid, cells, [], command="c")
    entry = report["rows"][0]["results"]["6"]
    assert entry["gap"] == pytest.approx(0.6) and entry["gap_std"] == pytest.approx(0.1414, abs=1e-4)
    assert entry["cells"] == ["uniform-k6-s0", "uniform-k6-s1"]
    # The plots draw the spread over seeds as error bars.
    (series,) = method_series(report, {6: 6.0})
    assert series.y == [pytest.approx(0.6)] and series.std == [pytest.approx(0.1414, abs=1e-4)]
    assert report["figures"]["GAP vs k"] == "gap_vs_k.png"



REPO = Path(__file__).resolve().parents[1]


def _parsed_grid(config: str | Path) -> Grid:
    """The grid of a ``vdistill experiment --config`` file, parsed and instantiated as the command does."""
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(experiment)
    return parser.instantiate_classes(parser.parse_args(["--config", str(config), "--output", "unused"])).grid


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs" / "experiments").glob("*.yaml")))
def test_presets_parse_as_the_command_parses_them(preset, monkeypatch):
    """Each preset is a valid ``vdistill experiment --config`` file whose cells all have base configs."""
    monkeypatch.chdir(REPO)  # presets name their base configs relative to the repository
    grid = _parsed_grid(f"configs/experiments/{preset}")
    cells = expand_grid(grid)
    assert cells[0].role == "teacher" and all(p.is_file() for cell in cells for p in cell.base_configs)
    if preset.startswith("paper-"):
        assert grid.ks == [6, 10, 15, 20, 30] and len(grid.baselines) == 6 and len(grid.students) == 10


def test_class_paths_in_a_grids_config_parts_stay_yaml(monkeypatch, tmp_path):
    """A sampler or callback in a grid's config parts stays class_path + init_args through parsing, so the
    experiment's and the cells' YAML files can hold it."""
    monkeypatch.chdir(REPO)
    sampler = {"class_path": "lightning_distill.data.samplers.RandomSampler", "init_args": {"k": 6}}
    callback = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {}}
    grid_yaml = yaml.safe_dump({"grid": {
        "family": "netvlad-tiny", "ks": [6], "baselines": [],
        "students": [{"mode": "serial", "losses": ["rep", "ce"], "module": {"train_sampler": sampler}}],
        "k_overrides": {6: {"model": {"init_args": {"train_sampler": sampler}}}},
        "trainer": {"callbacks": [callback]},
    }})
    (tmp_path / "grid.yaml").write_text(grid_yaml)
    grid = _parsed_grid(tmp_path / "grid.yaml")
    assert grid.students[0].module == {"train_sampler": sampler}
    assert grid.k_overrides == {6: {"model": {"init_args": {"train_sampler": sampler}}}}
    assert grid.trainer == {"callbacks": [callback]}
    yaml.safe_dump(asdict(grid))  # what `vdistill experiment` writes first; objects would fail here


def test_a_baseline_trained_on_other_frames_parses_from_yaml(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    (tmp_path / "grid.yaml").write_text("grid: {family: netvlad-tiny, ks: [6], baselines: [uniform, "
                                        "{sampler: uniform, train_selection: random}]}\n")
    grid = _parsed_grid(tmp_path / "grid.yaml")
    assert grid.baselines == ["uniform", Baseline("uniform", "random")]
    assert [cell.name for cell in expand_grid(grid)][1:] == ["uniform-k6-s0", "uniform-trained-on-random-k6-s0"]
    assert yaml.safe_load(yaml.safe_dump(asdict(grid)))["baselines"][1] == {"sampler": "uniform",
                                                                             "train_selection": "random",
                                                                             "weights": "scratch"}


MINI_GRID = """
grid:
  family: hrnn-tiny
  configs: {configs}
  ks: [6]
  baselines: [uniform, {{sampler: uniform, weights: teacher}}]
  students:
    - {{mode: serial, losses: [rep, pred, ce]}}
  trainer: {{max_epochs: 2, limit_train_batches: 2, limit_val_batches: 1, enable_progress_bar: false,
             enable_model_summary: false}}
  data: {{batch_size: 16, num_workers: 0}}
  synthetic: {{train_videos: 40, validate_videos: 16, test_videos: 40, num_classes: 8, min_frames: 20,
               max_frames: 60, labels_per_video: [1, 2]}}
  tsne_videos: 30
workers: 2
"""


def test_miniature_grid_runs_end_to_end_reports_cell_numbers_and_resumes(tmp_path):
    """Teacher, a baseline and a Serial student through `vdistill experiment`; then a rerun that trains nothing."""
    grid_file = tmp_path / "mini.yaml"
    grid_file.write_text(MINI_GRID.format(configs=REPO / "configs"))
    output = tmp_path / "run"
    main(["experiment", "--config", str(grid_file), "--output", str(output)])

    layout = ExperimentLayout(output)
    report = json.loads(layout.report_json.read_text())
    assert report["missing"] == []
    assert [row["method"] for row in report["rows"]] == ["Uniform-k", "Uniform-k (the teacher, untrained)",
                                                         "Serial L_rep, L_pred, L_CE"]
    assert all(list(row["results"]) == ["6"] for row in report["rows"])
    for entry in [row["results"]["6"] for row in report["rows"]] + [report["teacher"]]:
        (cell,) = entry["cells"]
        stored = json.loads(layout.test_metrics(cell).read_text())
        assert (entry["gap"], entry["map_all_classes"]) == (stored["test/gap"], stored["test/map_all_classes"])
    # The Serial student distilled from the teacher cell's checkpoint: trained once, reused.
    student_config = layout.config("serial-rep_pred_ce-k6-s0").read_text()
    assert str(layout.checkpoint("teacher-s0")) in student_config
    assert [c["model"] for c in report["cost"]] == ["Teacher", "k=6"]
    assert report["cost"][0]["flops_per_video"] > report["cost"][1]["flops_per_video"]
    markdown = layout.report_md.read_text()
    assert "| Uniform-k |" in markdown and "| Serial L_rep, L_pred, L_CE |" in markdown
    # The teacher tested on six frames: nothing trained for it, and not the teacher's all-frames numbers.
    assert not layout.fit_dir("uniform-teacher-weights-k6-s0").exists()
    untrained = json.loads(layout.test_metrics("uniform-teacher-weights-k6-s0").read_text())
    assert untrained != json.loads(layout.test_metrics("teacher-s0").read_text())
    assert "tsne.png" in report["figures"].values()
    for file in report["figures"].values():
        assert (output / file).read_bytes().startswith(PNG_SIGNATURE)
    assert list((output / "wandb").glob("offline-run-*"))

    cells = ("teacher-s0", "uniform-k6-s0", "serial-rep_pred_ce-k6-s0")
    finished = {cell: layout.done(cell).stat().st_mtime_ns for cell in cells}
    main(["experiment", "--config", str(grid_file), "--output", str(output)])
    assert {cell: layout.done(cell).stat().st_mtime_ns for cell in finished} == finished
    assert json.loads(layout.report_json.read_text())["rows"] == report["rows"]


def test_merge_replaces_a_component_whose_class_changes():
    base = {"sampler": {"class_path": "a.Uniform", "init_args": {"k": 6, "over_padded": True}}, "lr": 1}
    assert deep_merge(base, {"sampler": {"init_args": {"k": 30}}}) == {
        "sampler": {"class_path": "a.Uniform", "init_args": {"k": 30, "over_padded": True}},
        "lr": 1,
    }
    assert deep_merge(base, {"sampler": {"class_path": "a.Last", "init_args": {"k": 6}}})["sampler"] == {
        "class_path": "a.Last",
        "init_args": {"k": 6},
    }
    assert base["sampler"]["init_args"]["k"] == 6  # inputs untouched


def test_cell_configs_apply_the_cell_choices_and_keep_every_run_in_its_own_directory(tmp_path):
    grid = Grid(
        family="hrnn-tiny",
        configs=str(REPO / "configs"),
        ks=[6],
        baselines=["last"],
        students=[StudentVariant("serial", ["rep"]), StudentVariant("parallel", ["pred", "ce"], {"pred": 0.5})],
        k_overrides={6: {"model": {"init_args": {"encoder": {"init_args": {"block_length": 2}}}}}},
    )
    layout = ExperimentLayout(tmp_path)
    data = {"train_files": "/data/train*.tfrecord", "batch_size": 8}
    configs = {cell.name: (cell, cell_configs(cell, grid, layout, data)) for cell in expand_grid(grid)}
    for name, (cell, fits) in configs.items():
        assert fits[-1].config_path == layout.config(name) and fits[-1].run_dir == layout.fit_dir(name)
        # Every fit of every cell has a run directory of its own (vdistill puts its files there).
        assert all(fit.run_dir.parent == layout.cell_dir(name) for fit in fits)
        for fit in fits:
            config = fit.config
            checkpoints = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
            assert [(c["init_args"]["dirpath"], c["init_args"]["filename"]) for c in checkpoints] == [(None, "best")]
            assert "run_name" not in config
            assert all("save_dir" not in logger["init_args"] for logger in config["trainer"]["logger"])
            assert config["data"]["train_files"] == data["train_files"] and config["seed_everything"] == cell.seed
            base_encoder = load_config(cell.base_configs[1])["model"]["init_args"]["encoder"]["init_args"]
            encoder = config["model"]["init_args"]["encoder"]["init_args"]
            assert encoder == ({**base_encoder, "block_length": 2} if cell.k == 6 else base_encoder)

    last = configs["last-k6-s0"][1][0].config["model"]["init_args"]
    assert last["sampler"] == {"class_path": "lightning_distill.data.samplers.LastSampler", "init_args": {"k": 6}}
    # L_rep alone: stage 1 matches the teacher's representation, stage 2 fine-tunes with L_CE from stage 1.
    stage1, stage2 = configs["serial-rep-k6-s0"][1]
    assert list(stage1.config["model"]["init_args"]["loss"]) == ["rep"]
    assert stage1.config["model"]["init_args"]["teacher_checkpoint"] == str(layout.checkpoint("teacher-s0"))
    assert list(stage2.config["model"]["init_args"]["loss"]) == ["ce"]
    assert stage2.config["model"]["init_args"]["teacher_checkpoint"] is None
    assert stage2.config["model"]["init_args"]["init_from"] == str(stage1.run_dir / "checkpoints" / "best.ckpt")
    # A smaller loss set drops the base's other terms; a term keeps its base settings apart from the weight.
    parallel = configs["parallel-pred_ce-k6-s0"][1][0].config["model"]["init_args"]
    base_pred = load_config(REPO / "configs" / "role" / "parallel.yaml")["model"]["init_args"]["loss"]["pred"]
    assert list(parallel["loss"]) == ["pred", "ce"]
    assert parallel["loss"]["pred"]["init_args"] == {**base_pred["init_args"], "weight": 0.5}


def test_a_parallel_student_can_stop_when_its_teacher_stops_improving_and_keep_its_own_best(tmp_path):
    variants = [StudentVariant("parallel", ["ce"]), StudentVariant("parallel", ["ce"], stop_on="val/teacher/gap",
                                                                    tag="stop-on-teacher")]
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], baselines=[], students=variants, patience=2)
    cells = {cell.name: cell for cell in expand_grid(grid)}

    def monitors(name: str) -> dict[str, tuple[str, int | None]]:
        (fit,) = cell_configs(cells[name], grid, ExperimentLayout(tmp_path), dict(FILES))
        callbacks = fit.config["trainer"]["callbacks"]
        return {c["class_path"].split(".")[-1]: (c["init_args"]["monitor"], c["init_args"].get("patience"))
                for c in callbacks}

    # Without stop_on, early stopping watches what the checkpoint keeps (configs/role/parallel.yaml).
    assert monitors("parallel-ce-k6-s0") == {"EarlyStopping": ("val/student/gap", 2),
                                             "ModelCheckpoint": ("val/student/gap", None)}
    assert monitors("parallel-ce-stop-on-teacher-k6-s0") == {"EarlyStopping": ("val/teacher/gap", 2),
                                                             "ModelCheckpoint": ("val/student/gap", None)}


def test_a_late_joining_student_is_watched_from_its_join_for_the_epochs_its_variant_sets(tmp_path):
    late = StudentVariant("parallel", ["ce"], module={"student_start_epoch": 4}, trainer={"max_epochs": 12},
                          tag="late")
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], baselines=["uniform"], students=[late],
                patience=2, trainer={"max_epochs": 5})
    cells = {cell.name: cell for cell in expand_grid(grid)}
    (fit,) = cell_configs(cells["parallel-ce-late-k6-s0"], grid, ExperimentLayout(tmp_path), dict(FILES))
    trainer = fit.config["trainer"]
    (stopping,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    assert stopping == {"class_path": "lightning_distill.training.early_stopping.DelayedEarlyStopping",
                        "init_args": {"monitor": "val/student/gap", "mode": "max", "patience": 2, "start_epoch": 4}}
    assert trainer["max_epochs"] == 12
    # The variant's trainer is its own: the grid's other cells keep the grid's.
    (baseline,) = cell_configs(cells["uniform-k6-s0"], grid, ExperimentLayout(tmp_path), dict(FILES))
    assert baseline.config["trainer"]["max_epochs"] == 5
    # A join decided by the teacher's plateau: watched once the student has joined, whenever that is.
    plateau = StudentVariant("parallel", ["ce"], module={"student_start_patience": 2}, tag="plateau")
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], students=[plateau], patience=2)
    (cell,) = [cell for cell in expand_grid(grid) if cell.name == "parallel-ce-plateau-k6-s0"]
    (fit,) = cell_configs(cell, grid, ExperimentLayout(tmp_path), dict(FILES))
    (stopping,) = [c for c in fit.config["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    assert stopping["init_args"] == {"monitor": "val/student/gap", "mode": "max", "patience": 2, "start_epoch": 0,
                                     "after_student_joins": True}
    with pytest.raises(ConfigError, match=r"joins at epoch 4, but its cells train 4 epochs: raise its trainer"):
        expand_grid(Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], students=[
            StudentVariant("parallel", ["ce"], module={"student_start_epoch": 4}, trainer={"max_epochs": 4})]))


def test_models_trained_on_random_frames_are_rows_of_their_own_tested_on_uniform_frames(tmp_path):
    """``train_selection``: a baseline or student trains on Random-k frames (every fit of the two-stage recipe)
    and is tested on Uniform-k, beside the same models trained on Uniform-k frames."""
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], seeds=[0],
                baselines=["uniform", Baseline("uniform", train_selection="random")],
                students=[StudentVariant("serial", ["rep"]), StudentVariant("serial", ["rep"], train_selection="random")])
    assert row_labels(grid) == ["Uniform-k", "Uniform-k (trained on Random-k)", "Serial L_rep",
                                "Serial L_rep (trained on Random-k)"]
    cells = {cell.name: cell for cell in expand_grid(grid)}
    random = {"class_path": "lightning_distill.data.samplers.RandomSampler", "init_args": {"k": 6}}
    uniform = {"class_path": "lightning_distill.data.samplers.UniformSampler", "init_args": {"k": 6}}
    expected = {"uniform-k6-s0": 1, "uniform-trained-on-random-k6-s0": 1, "serial-rep-k6-s0": 2,
                "serial-rep-trained-on-random-k6-s0": 2}
    for name, fits in expected.items():
        runs = cell_configs(cells[name], grid, ExperimentLayout(tmp_path), dict(FILES))
        assert len(runs) == fits
        for run in runs:
            init_args = run.config["model"]["init_args"]
            assert init_args["sampler"] == uniform
            assert init_args.get("train_sampler") == (random if "random" in name else None)


def test_an_any_k_student_is_trained_once_per_seed_and_tested_at_every_k(tmp_path):
    variant = StudentVariant("serial", ["pred", "ce"], train_ks=[6, 9, 12], module={"teacher_targets": "live"})
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6, 12, 30], baselines=[], students=[variant])
    layout = ExperimentLayout(tmp_path)
    order = [cell.name for cell in expand_grid(grid)]
    cells = {cell.name: cell for cell in expand_grid(grid)}
    # Every cell comes after the cells it waits for (the runner's fingerprints include theirs).
    assert all(order.index(name) < order.index(cell.name) for cell in cells.values() for name in cell.waits_for)
    assert variant.label == "Serial L_pred, L_CE (any-k)"
    # Trained (and validated, for early stopping) at the largest k, where training converges last.
    trainer = cells["serial-pred_ce-any-k-k30-s0"]
    assert trainer.trained_by is None and trainer.waits_for == ["teacher-s0"]
    for k in (6, 12):
        cell = cells[f"serial-pred_ce-any-k-k{k}-s0"]
        assert cell.trained_by == trainer.name and cell.waits_for == ["teacher-s0", trainer.name]
        run = CellRun(cell, cell_configs(cell, grid, layout, dict(FILES)), "f")
        # Only a test: the trainer cell's checkpoint, at this cell's k (its config's sampler).
        (command,) = cell_commands(run, layout)
        assert command[0] == "test" and command[command.index("--ckpt_path") + 1] == str(layout.checkpoint(trainer.name))
        init_args = run.fits[-1].config["model"]["init_args"]
        assert init_args["sampler"]["init_args"] == {"k": k}
        assert init_args["train_sampler"] == {"class_path": "lightning_distill.data.samplers.AnyKSampler",
                                              "init_args": {"ks": [6, 9, 12], "selection": "uniform"}}
        assert init_args["teacher_targets"] == "live"  # the variant's module settings
    first = CellRun(trainer, cell_configs(trainer, grid, layout, dict(FILES)), "f")
    assert [command[0] for command in cell_commands(first, layout)] == ["fit", "test"]
    # Its one checkpoint serves every k: validated at each of the grid's ks, kept (and stopped) by their mean GAP,
    # not by the GAP at one k.
    assert first.fits[-1].config["model"]["init_args"]["validation_ks"] == [6, 12, 30]
    (checkpoint,) = [c for c in first.fits[-1].config["trainer"]["callbacks"] if "ModelCheckpoint" in c["class_path"]]
    assert checkpoint["init_args"]["monitor"] == "val/any_k/gap" and checkpoint["init_args"]["mode"] == "max"
    assert checkpoint["init_args"]["filename"] == "best"
    patient = CellRun(trainer, cell_configs(trainer, replace(grid, patience=2), layout, dict(FILES)), "f")
    (stopping,) = [c for c in patient.fits[-1].config["trainer"]["callbacks"] if "EarlyStopping" in c["class_path"]]
    assert stopping["init_args"] == {"monitor": "val/any_k/gap", "mode": "max", "patience": 2}


def test_the_report_gives_an_any_k_students_tested_epoch_as_its_best_mean_over_ks(tmp_path):
    variant = StudentVariant("serial", ["ce"], train_ks=[6, 9, 12])
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6, 30], baselines=[], students=[variant],
                seeds=[0])
    cells = expand_grid(grid)
    layout = ExperimentLayout(tmp_path)
    # The GAP at the cell's k peaks in the 3rd epoch, the mean over the ks in the 2nd: the checkpoint is the mean's.
    any_k = [{"epoch": e, "step": e, "val/gap": g, "val/any_k/gap": m}
             for e, (g, m) in enumerate([(0.5, 0.4), (0.6, 0.7), (0.7, 0.6), (0.65, 0.5)])]
    for cell in cells:
        fabricate_cell(layout, cell.name, {"test/gap": 0.5, "test/map_all_classes": 0.3},
                       any_k if cell.name == "serial-ce-any-k-k30-s0" else [{"epoch": 0, "step": 0, "val/gap": 0.5}])
    report = write_report(layout, grid, cells, [], command="vdistill experiment --config g.yaml --output run")
    assert report["epochs"]["serial-ce-any-k-k30-s0"] == {"best": 2, "trained": 4}


def test_an_any_k_variant_with_train_every_batch_sees_every_batch_at_those_ks_too(tmp_path):
    variant = StudentVariant("serial", ["rep", "pred", "ce"], train_ks=[6, 9, 12], train_every_batch=[12, 6])
    assert variant.slug == "serial-rep_pred_ce-any-k-also-k6-k12"
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6, 12], baselines=[], students=[variant])
    cells = {cell.name: cell for cell in expand_grid(grid)}
    for k in (6, 12):
        cell = cells[f"serial-rep_pred_ce-any-k-also-k6-k12-k{k}-s0"]
        run = CellRun(cell, cell_configs(cell, grid, ExperimentLayout(tmp_path), dict(FILES)), "f")
        assert run.fits[-1].config["model"]["init_args"]["train_sampler"]["init_args"] == {
            "ks": [6, 9, 12], "selection": "uniform", "every_batch": [12, 6]}

    def grid_of(student):
        return Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], baselines=[], students=[student])

    with pytest.raises(ConfigError, match="sets train_every_batch but no train_ks"):
        expand_grid(grid_of(StudentVariant("serial", ["ce"], train_every_batch=[6])))
    with pytest.raises(ConfigError, match=r"train_every_batch \[30\] of .* are not among its train_ks \[6, 9\]"):
        expand_grid(grid_of(StudentVariant("serial", ["ce"], train_ks=[6, 9], train_every_batch=[30])))


def test_a_baseline_of_the_teachers_weights_only_tests_the_seeds_teacher_on_k_frames(tmp_path):
    baseline = Baseline("uniform", weights="teacher")
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6, 30], seeds=[0, 1], baselines=[baseline],
                students=[])
    assert row_labels(grid) == ["Uniform-k (the teacher, untrained)"]
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    for seed in (0, 1):
        for k in (6, 30):
            cell = cells[f"uniform-teacher-weights-k{k}-s{seed}"]
            assert cell.waits_for == [f"teacher-s{seed}"]
            run = CellRun(cell, cell_configs(cell, grid, layout, dict(FILES)), "f")
            (command,) = cell_commands(run, layout)
            assert command[0] == "test"
            assert command[command.index("--ckpt_path") + 1] == str(layout.checkpoint(f"teacher-s{seed}"))
            model = run.fits[-1].config["model"]
            assert model["init_args"]["sampler"] == {"class_path": "lightning_distill.data.samplers.UniformSampler",
                                                     "init_args": {"k": k}}
            assert model["class_path"].endswith("TeacherModule")


def test_a_student_of_several_teachers_distils_from_its_seeds_teacher_of_each_family(tmp_path):
    both = StudentVariant("serial", ["rep", "pred", "ce"], teachers=["hrnn-tiny", "nextvlad-tiny"])
    other = StudentVariant("serial", ["pred", "ce"], teachers=["nextvlad-tiny"])
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], baselines=[], seeds=[0, 1],
                students=[StudentVariant("serial", ["pred", "ce"]), both, other])
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    assert both.label == "Serial L_rep, L_pred, L_CE (teachers: hrnn-tiny + nextvlad-tiny)"
    assert row_labels(grid)[1:] == [both.label, other.label]
    # One teacher of the other family per seed, trained from that family's config parts.
    extra = cells["teacher-nextvlad-tiny-s1"]
    assert extra.role == "teacher" and extra.method == "Teacher (nextvlad-tiny)" and extra.seed == 1
    assert extra.base_configs[1] == REPO / "configs" / "family" / "nextvlad-tiny.yaml"
    assert sum(c.role == "teacher" for c in cells.values()) == 4
    ensemble = cells["serial-rep_pred_ce-from-hrnn-tiny+nextvlad-tiny-k6-s1"]
    assert ensemble.teacher == "teacher-s1" and ensemble.ensemble == ("teacher-nextvlad-tiny-s1",)
    assert ensemble.waits_for == ["teacher-s1", "teacher-nextvlad-tiny-s1"]
    init_args = cell_configs(ensemble, grid, layout, dict(FILES))[-1].config["model"]["init_args"]
    assert init_args["teacher_checkpoint"] == str(layout.checkpoint("teacher-s1"))
    assert init_args["ensemble_teachers"] == [str(layout.checkpoint("teacher-nextvlad-tiny-s1"))]
    # Another family's teacher alone: no teacher of the student's own family, and it is not the default one.
    alone = cells["serial-pred_ce-from-nextvlad-tiny-k6-s0"]
    assert alone.teacher is None and alone.waits_for == ["teacher-nextvlad-tiny-s0"]
    init_args = cell_configs(alone, grid, layout, dict(FILES))[-1].config["model"]["init_args"]
    assert "teacher_checkpoint" not in init_args
    assert init_args["ensemble_teachers"] == [str(layout.checkpoint("teacher-nextvlad-tiny-s0"))]
    assert cells["serial-pred_ce-k6-s0"].ensemble == ()


def test_the_report_gives_the_other_families_teachers_beside_the_skyline(configs, tmp_path):
    (configs / "family" / "nextvlad.yaml").write_text("{}\n")
    grid = make_grid(configs, seeds=[0, 1], baselines=["uniform"], ks=[6],
                     students=[StudentVariant("serial", ["pred", "ce"], teachers=["hrnn", "nextvlad"])])
    cells = expand_grid(grid)
    layout = ExperimentLayout(tmp_path / "run")
    gaps = {"teacher-s0": 0.7, "teacher-s1": 0.8, "teacher-nextvlad-s0": 0.9, "teacher-nextvlad-s1": 0.95}
    for cell in cells:
        fabricate_cell(layout, cell.name, {"test/gap": gaps.get(cell.name, 0.5), "test/map_all_classes": 0.25})
    report = write_report(layout, grid, cells, [], command="vdistill experiment")
    assert report["teacher"]["gap"] == pytest.approx(0.75)
    assert report["other_teachers"]["Teacher (nextvlad)"]["gap"] == pytest.approx(0.925)
    assert report["other_teachers"]["Teacher (nextvlad)"]["cells"] == ["teacher-nextvlad-s0", "teacher-nextvlad-s1"]
    lines = layout.report_md.read_text().splitlines()
    skyline = next(i for i, line in enumerate(lines) if line.startswith("Teacher skyline"))
    assert lines[skyline + 2].startswith("Teacher (nextvlad), all frames: GAP 0.925 ± 0.035")
    assert "| Serial L_pred, L_CE (teachers: hrnn + nextvlad) |" in "\n".join(lines)


def test_students_that_read_a_skims_frames_wait_for_their_seeds_scorer(tmp_path):
    skim = StudentVariant("serial", ["rep", "pred", "ce"], selection="skim")
    grid = Grid(family="netvlad-tiny", configs=str(REPO / "configs"), ks=[6, 10], baselines=["uniform"], seeds=[0, 1],
                students=[StudentVariant("serial", ["rep", "pred", "ce"]), skim], trainer={"max_epochs": 3})
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    assert skim.label == "Serial L_rep, L_pred, L_CE (skim)" and row_labels(grid)[-1] == skim.label
    # One scorer per seed, of no family, taught by that seed's teacher as an ensemble of one; it trains for its
    # role's epochs, not the grid's.
    scorer = cells["skim-s1"]
    assert scorer.role == "skim-scorer" and scorer.k is None and scorer.waits_for == ["teacher-s1"]
    assert scorer.base_configs == (REPO / "configs" / "role" / "skim-scorer.yaml",)
    config = cell_configs(scorer, grid, layout, dict(FILES))[-1].config
    assert config["model"]["init_args"]["ensemble_teachers"] == [str(layout.checkpoint("teacher-s1"))]
    assert config["model"]["init_args"]["encoder"]["class_path"] == "lightning_distill.models.skim.SkimEncoder"
    assert config["trainer"]["max_epochs"] == load_config(scorer.base_configs[0])["trainer"]["max_epochs"] != 3
    student = cells["serial-rep_pred_ce-skim-k10-s1"]
    assert student.waits_for == ["teacher-s1", "skim-s1"] and student.sampler is None
    init_args = cell_configs(student, grid, layout, dict(FILES))[-1].config["model"]["init_args"]
    assert init_args["sampler"] == {"class_path": "lightning_distill.training.skim_sampler.SkimSampler",
                                    "init_args": {"k": 10, "scorer_checkpoint": str(layout.checkpoint("skim-s1"))}}
    assert init_args["teacher_checkpoint"] == str(layout.checkpoint("teacher-s1"))
    assert cells["serial-rep_pred_ce-k10-s1"].sampler == "uniform" and cells["serial-rep_pred_ce-k10-s1"].scorer is None


def test_a_skim_of_other_features_is_a_scorer_of_its_own_shared_by_its_students(tmp_path):
    low_rank = {"rgb_dims": 32, "audio_dims": 16}
    rows = [StudentVariant("serial", ["rep", "pred", "ce"], selection="skim"),
            StudentVariant("serial", ["rep", "pred", "ce"], selection="skim", scorer=low_rank),
            StudentVariant("serial", ["pred", "ce"], selection="skim", scorer=dict(reversed(low_rank.items())))]
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6], seeds=[0], students=rows)
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    assert sorted(name for name in cells if name.startswith("skim")) == ["skim-audio_dims16-rgb_dims32-s0", "skim-s0"]
    scorer = cells["skim-audio_dims16-rgb_dims32-s0"]
    assert scorer.method == "Skim of 32 rgb + 16 audio features (frame scorer)"
    assert cells["skim-s0"].method == "Skim of 128 audio features (frame scorer)"
    encoder = cell_configs(scorer, grid, layout, dict(FILES))[-1].config["model"]["init_args"]["encoder"]
    assert encoder["init_args"] == {"hidden": 16, **low_rank}
    assert "rgb_dims" not in cell_configs(cells["skim-s0"], grid, layout, dict(FILES))[-1].config["model"][
        "init_args"]["encoder"].get("init_args", {})
    for name in ["serial-rep_pred_ce-skim-audio_dims16-rgb_dims32-k6-s0", "serial-pred_ce-skim-audio_dims16-rgb_dims32-k6-s0"]:
        assert cells[name].scorer == scorer.name
    assert cells["serial-rep_pred_ce-skim-k6-s0"].scorer == "skim-s0"
    with pytest.raises(ConfigError, match="sets scorer but no selection"):
        expand_grid(Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6],
                         students=[StudentVariant("serial", ["ce"], scorer=low_rank)]))


def test_a_utility_skim_is_a_scorer_cell_of_its_own_role_and_its_students_read_its_choice(tmp_path):
    rows = [StudentVariant("serial", ["rep", "pred", "ce"], selection="skim"),
            StudentVariant("serial", ["rep", "pred", "ce"], selection="utility-skim"),
            StudentVariant("serial", ["rep", "pred", "ce"], selection="utility-skim", scorer={"stride": 8})]
    grid = Grid(family="netvlad-tiny", configs=str(REPO / "configs"), ks=[3], seeds=[0], students=rows, patience=2)
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    scorer = cells["utility-skim-s0"]
    assert scorer.role == "utility-skim-scorer" and scorer.waits_for == ["teacher-s0"]
    assert scorer.base_configs == (REPO / "configs" / "role" / "utility-skim-scorer.yaml",)
    assert scorer.method == "Utility skim of 32 rgb + 32 audio features, every 4th frame (frame scorer)"
    assert cells["utility-skim-stride8-s0"].method == (
        "Utility skim of 32 rgb + 32 audio features, every 8th frame (frame scorer)")
    config = cell_configs(scorer, grid, layout, dict(FILES))[-1].config
    model = config["model"]
    assert model["class_path"] == "lightning_distill.training.frame_utility.FrameUtilityModule"
    # Its checkpoint keeps the lowest validation error of the utility estimates; the grid's patience stops it when
    # that error stops falling (stopping when it stopped rising ended the first such fits after 4 epochs).
    stopping, checkpoint = config["trainer"]["callbacks"][-2:]
    assert checkpoint["init_args"]["monitor"] == "val/utility" and checkpoint["init_args"]["mode"] == "min"
    assert stopping["init_args"] == {"monitor": "val/utility", "mode": "min", "patience": 2}
    student_callbacks = cell_configs(cells["serial-rep_pred_ce-utility-skim-k3-s0"], grid, layout, dict(FILES))[
        -1].config["trainer"]["callbacks"]
    assert student_callbacks[-2]["init_args"] == {"monitor": "val/gap", "mode": "max", "patience": 2}
    assert model["init_args"]["ensemble_teachers"] == [str(layout.checkpoint("teacher-s0"))]
    strided = cell_configs(cells["utility-skim-stride8-s0"], grid, layout, dict(FILES))[-1].config["model"]
    assert strided["init_args"]["encoder"]["init_args"] == {**model["init_args"]["encoder"]["init_args"], "stride": 8}
    student = cells["serial-rep_pred_ce-utility-skim-k3-s0"]
    assert student.waits_for == ["teacher-s0", "utility-skim-s0"]
    init_args = cell_configs(student, grid, layout, dict(FILES))[-1].config["model"]["init_args"]
    assert init_args["sampler"]["init_args"] == {"k": 3, "scorer_checkpoint": str(layout.checkpoint("utility-skim-s0"))}
    assert cells["serial-rep_pred_ce-skim-k3-s0"].scorer == "skim-s0"


def test_a_scorers_label_says_what_it_skims_from_its_role_and_the_grids_settings():
    role = REPO / "configs" / "role"
    utility = role / "utility-skim-scorer.yaml"
    assert (scorer_method("utility-skim", utility, {"rgb_dims": 30, "audio_dims": 30, "hidden": 64})
            == "Utility skim of 30 rgb + 30 audio features, every 4th frame, hidden 64 (frame scorer)")
    assert (scorer_method("utility-skim", utility, {"stride": 1})
            == "Utility skim of 32 rgb + 32 audio features (frame scorer)")
    assert scorer_method("skim", role / "skim-scorer.yaml", {"rgb_dims": 64, "audio_dims": 0}) == (
        "Skim of 64 rgb features (frame scorer)")
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 103)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "103rd"]


def test_an_any_k_student_of_a_selection_trains_on_uniform_frames_and_is_tested_on_the_choice(tmp_path):
    any_k = StudentVariant("serial", ["rep", "pred", "ce"], selection="utility-skim", train_ks=[6, 8, 10])
    plain = StudentVariant("serial", ["rep", "pred", "ce"], train_ks=[6, 8, 10])
    grid = Grid(family="netvlad-tiny", configs=str(REPO / "configs"), ks=[3, 10], seeds=[0], students=[plain, any_k])
    layout = ExperimentLayout(tmp_path)
    cells = {cell.name: cell for cell in expand_grid(grid)}
    assert any_k.slug == "serial-rep_pred_ce-any-k-utility-skim" != plain.slug
    trainer, tester = cells[f"{any_k.slug}-k10-s0"], cells[f"{any_k.slug}-k3-s0"]
    assert tester.trained_by == trainer.name and trainer.scorer == tester.scorer == "utility-skim-s0"
    init_args = cell_configs(trainer, grid, layout, dict(FILES))[-1].config["model"]["init_args"]
    assert init_args["train_sampler"] == {"class_path": "lightning_distill.data.samplers.AnyKSampler",
                                          "init_args": {"ks": [6, 8, 10], "selection": "uniform"}}
    assert init_args["sampler"]["class_path"] == "lightning_distill.training.skim_sampler.SkimSampler"
    tested = cell_configs(tester, grid, layout, dict(FILES))[-1].config["model"]["init_args"]["sampler"]
    assert tested["init_args"] == {"k": 3, "scorer_checkpoint": str(layout.checkpoint("utility-skim-s0"))}


def test_the_report_charges_frames_chosen_per_video_for_the_choice(configs, tmp_path):
    (configs / "role" / "skim-scorer.yaml").write_text("{}\n")
    grid = make_grid(configs, seeds=[0], baselines=["uniform"], ks=[6, 30],
                     students=[StudentVariant("serial", ["pred", "ce"], selection="skim"),
                               StudentVariant("serial", ["pred", "ce"], selection="skim", scorer={"rgb_dims": 8})])
    cells = expand_grid(grid)
    layout = ExperimentLayout(tmp_path / "run")
    for cell in cells:
        metrics = {"test/gap": 0.6, "test/map_all_classes": 0.3}
        if cell.scorer:
            metrics.update({"test/gap": 0.7, "test/selection_frames": 20.5, "test/selection_gflops": 0.003})
        if cell.role == "skim-scorer":
            metrics["test/gap"] = 0.2 if cell.encoder else 0.1
        fabricate_cell(layout, cell.name, metrics)
    costs = [
        CostEntry("Teacher", 300, {"params": 10, "macs_per_video": 5e8, "flops_per_video": 1e9, "videos_per_s": 50.0}),
        CostEntry("k=6", 6, {"params": 10, "macs_per_video": 1e7, "flops_per_video": 2e7, "videos_per_s": 900.0}),
        CostEntry("k=30", 30, {"params": 10, "macs_per_video": 5e7, "flops_per_video": 1e8, "videos_per_s": 400.0}),
    ]
    report = write_report(layout, grid, cells, costs, command="vdistill experiment")
    assert {method: scorer["cells"] for method, scorer in report["frame_scorers"].items()} == {
        "Skim of 128 audio features (frame scorer)": ["skim-s0"],
        "Skim of 8 rgb + 128 audio features (frame scorer)": ["skim-rgb_dims8-s0"]}
    by_read = {s.label: s for s in method_series(report, {6: 6.0, 30: 30.0}, "selection_frames")}
    assert by_read["Serial L_pred, L_CE (skim)"].x == [26.5, 50.5] and by_read["Uniform-k"].x == [6.0, 30.0]
    by_flops = {s.label: s for s in method_series(report, {6: 0.02, 30: 0.1}, "selection_gflops")}
    assert by_flops["Serial L_pred, L_CE (skim)"].x == pytest.approx([0.023, 0.103])
    markdown = layout.report_md.read_text()
    assert "| Serial L_pred, L_CE (skim) | 6 | 26.5 | 0.0230 | 0.700 |" in markdown
    assert "Skim of 128 audio features (frame scorer), every frame, as a classifier: GAP 0.100." in markdown
    assert "Skim of 8 rgb + 128 audio features (frame scorer), every frame, as a classifier: GAP 0.200." in markdown
    assert report["figures"]["GAP vs frames read (the choice of frames included)"] == "gap_vs_frames_read.png"
    assert (layout.root / "gap_vs_frames_read.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cells_start_only_after_the_cells_they_wait_for(tmp_path, monkeypatch):
    grid = Grid(family="hrnn-tiny", configs=str(REPO / "configs"), ks=[6, 12], baselines=["uniform"],
                students=[StudentVariant("serial", ["ce"], train_ks=[6, 12])], seeds=[0])
    layout = ExperimentLayout(tmp_path)
    runs = [CellRun(cell, cell_configs(cell, grid, layout, dict(FILES)), cell.name) for cell in expand_grid(grid)]
    started: list[str] = []

    def execute(run, layout, slot):
        finished = {name for name in started if layout.done(name).is_file()}
        assert set(run.cell.waits_for) <= finished, f"{run.cell.name} started before {run.cell.waits_for}"
        started.append(run.cell.name)
        layout.cell_dir(run.cell.name).mkdir(parents=True, exist_ok=True)
        write_json_atomic(layout.done(run.cell.name), {"fingerprint": run.fingerprint})
        return run.cell.name != "serial-ce-any-k-k12-s0", 1.0  # the any-k trainer fails

    monkeypatch.setattr(runner, "execute_cell", execute)
    failed = run_cells(runs, layout, [Slot({}, []), Slot({}, [])])
    # The cell testing the failed trainer's checkpoint is skipped, not run.
    assert sorted(failed) == ["serial-ce-any-k-k12-s0", "serial-ce-any-k-k6-s0"]
    assert "serial-ce-any-k-k6-s0" not in started
    assert started[0] == "teacher-s0" and set(started) == {"teacher-s0", "uniform-k6-s0", "uniform-k12-s0",
                                                         "serial-ce-any-k-k12-s0"}
