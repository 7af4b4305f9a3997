"""The ``vdistill`` command as a user drives it: every shipped config trains one batch, data commands work, and
user mistakes end in one readable line (exit code 2) rather than a traceback."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from cli_support import CONFIGS, data_args, in_own_context, run_error, run_ok, teacher_checkpoint
from conftest import SYNTHETIC_CLASSES
from test_checkpoints import payload_checkpoint
from lightning_distill.cli.main import main
from lightning_distill.cli.model_commands import VDistillCLI
from lightning_distill.data.frame_store import FrameStore

PAPER = sorted(p.name for p in CONFIGS.glob("*.yaml"))
TINY = sorted(p.name for p in (CONFIGS / "tiny").glob("*.yaml"))
FAMILIES = ("hrnn", "netvlad", "nextvlad")


def test_allocator_is_set_only_when_vdistill_runs_as_a_program(monkeypatch):
    calls = []
    monkeypatch.setattr("lightning_distill.cli.main.keep_freed_memory", lambda: calls.append("set") or True)
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])  # from Python: the caller's process keeps its allocator
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["vdistill", "inspect", "--help"])
    with pytest.raises(SystemExit):
        main()  # the console script
    assert calls == ["set"]


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "profile", "convert", "synth", "inspect"):
        assert command in text


def test_synth_convert_inspect(tmp_path, capsys):
    run_ok(["synth", f"--output={tmp_path}/raw", "--train_videos=6", "--validate_videos=2", "--test_videos=2",
            "--num_classes=5", "--min_frames=30", "--max_frames=40", "--shards_per_split=1"])
    run_ok(["convert", f"--input={tmp_path}/raw/train*.tfrecord", f"--output={tmp_path}/train.h5",
            "--num_classes=5"])
    store = FrameStore(tmp_path / "train.h5")
    assert len(store) == 6 and store.num_classes == 5
    assert all(30 <= n <= 40 for n in store.lengths)
    run_ok(["inspect", f"--store={tmp_path}/train.h5"])
    summary = capsys.readouterr().out
    assert "videos" in summary and f"{int(store.lengths.sum()):,}" in summary


def test_convert_glob_matching_nothing_is_one_line(tmp_path, capsys):
    message = run_error(["convert", f"--input={tmp_path}/nothing*.tfrecord", f"--output={tmp_path}/x.h5"], capsys)
    assert "nothing*.tfrecord" in message
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_config_trains_one_batch(name, synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--config={CONFIGS / 'tiny' / name}", *data_args(synthetic_tfrecords, tmp_path / "stores")]
    if name.startswith("student_"):
        args.append(f"--model.init_args.teacher_checkpoint={teacher_checkpoint(name, synthetic_tfrecords, tmp_path)}")
    if name.startswith("early_exit_"):
        # The gate reads a trained student; the family's teacher, trained for a step, stands in for it and its teacher.
        trained = teacher_checkpoint(name.replace("early_exit_", "student_"), synthetic_tfrecords, tmp_path)
        args += [f"--model.init_args.init_from={trained}", f"--model.init_args.teacher_checkpoint={trained}"]
    if name.startswith(("skim_", "utility_skim_")):
        teacher = teacher_checkpoint("student_netvlad.yaml", synthetic_tfrecords, tmp_path)
        args.append(f"--model.init_args.ensemble_teachers=[{teacher}]")
    run_ok([*args, "--trainer.fast_dev_run=1"])


def validate_paper_size(config: Path, data: list[str], *extra: str) -> tuple[LightningModule, list[torch.Tensor]]:
    """Set up a fit of ``config`` as ``vdistill fit`` would, run its sanity-check validation batch and skip training.

    Everything a fit builds is built at the shipped sizes (encoders, head, optimiser and schedule, data pipeline,
    a student's teacher) and one batch goes through it. Training itself is left to the tiny configs, which differ
    from these only in sizes: gradients and Adam state of paper sizes (two 287M-parameter NetVLADs in Parallel
    mode) took 14-24 GB, more than a 24 GB CI machine could spare.

    Returns the module and the probabilities its head produced.
    """
    def fit() -> tuple[LightningModule, list[torch.Tensor]]:
        cli = VDistillCLI(args=[f"--config={config}", *data, *extra, "--trainer.limit_train_batches=0",
                                "--trainer.limit_val_batches=1", "--trainer.max_epochs=1",
                                "--trainer.enable_model_summary=false"], run=False)
        probabilities: list[torch.Tensor] = []
        cli.model.head.register_forward_hook(lambda _module, _inputs, output: probabilities.append(output))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli.model, probabilities

    return in_own_context(fit)


def assert_scores_one_batch(probabilities: list[torch.Tensor], roles: int) -> None:
    """One validation batch of 4 videos was scored over the synthetic classes, once per role (student, teacher)."""
    assert len(probabilities) == roles
    for scores in probabilities:
        assert scores.shape == (4, SYNTHETIC_CLASSES)
        assert ((scores > 0) & (scores < 1)).all()


@pytest.mark.parametrize("name", [n for n in PAPER if not n.startswith("student_")])
def test_every_paper_config_builds_and_scores_a_batch(name, synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    _, probabilities = validate_paper_size(CONFIGS / name, data)
    # A Parallel module scores both its teacher and its student with the shared head.
    assert_scores_one_batch(probabilities, roles=2 if name.startswith("parallel_") else 1)
    assert not list(tmp_path.glob("runs/**/*.ckpt"))  # nothing trained, nothing saved


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_student_configs_take_a_paper_teacher(family, synthetic_tfrecords, tmp_path, monkeypatch):
    # A weights-only checkpoint of the teacher config (a full one with optimiser state is GBs for NetVLAD) shows
    # the student config matches the teacher config's sizes; its head is marked so the student's copy is visible.
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    checkpoint = tmp_path / "teacher.ckpt"

    def save_teacher() -> None:
        teacher = VDistillCLI(args=[f"--config={CONFIGS / f'teacher_{family}.yaml'}", *data], run=False)
        teacher.trainer.strategy.connect(teacher.model)
        with torch.no_grad():
            for parameter in teacher.model.head.parameters():
                parameter.fill_(0.125)
        teacher.trainer.save_checkpoint(checkpoint, weights_only=True)

    in_own_context(save_teacher)
    gc.collect()

    student, probabilities = validate_paper_size(
        CONFIGS / f"student_{family}.yaml", data, f"--model.init_args.teacher_checkpoint={checkpoint}"
    )
    # The teacher ran once, filling the target cache beside the train store; the student keeps none of it.
    assert student.teacher is None and len(list((tmp_path / "stores").glob("train.targets-*.h5"))) == 1
    # The paper shares the classifier: the student's head starts as the teacher's.
    assert all((parameter == 0.125).all() for parameter in student.head.parameters())
    assert_scores_one_batch(probabilities, roles=1)


def test_fit_test_predict_profile_round_trip(synthetic_tfrecords, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    teacher = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    student_config = f"--config={CONFIGS / 'tiny' / 'student_hrnn.yaml'}"
    run_ok(["fit", student_config, *data, f"--model.init_args.teacher_checkpoint={teacher}",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"])
    fit_output = capsys.readouterr().out
    fit_log = caplog.text
    student = tmp_path / "runs/tiny/student_hrnn_k6/latest/checkpoints/last.ckpt"
    assert not any(k.startswith("teacher") for k in torch.load(student, weights_only=True)["state_dict"])

    # The student is tested and used without its teacher: the teacher's checkpoint is gone.
    teacher.unlink()
    run_ok(["test", student_config, *data, f"--ckpt_path={student}", f"--metrics_json={tmp_path}/test.json"])
    metrics = json.loads((tmp_path / "test.json").read_text())
    assert set(metrics) == {f"test/{k}" for k in ("gap", "map", "map_all_classes", "hit_at_one", "perr")}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # What the user gives wins over the checkpoint's hyper-parameters: the same weights tested at another k.
    run_ok(["test", student_config, *data, f"--ckpt_path={student}", f"--metrics_json={tmp_path}/test_k3.json",
            "--model.init_args.sampler.init_args.k=3"])
    assert json.loads((tmp_path / "test_k3.json").read_text()) != metrics
    run_ok(["test", student_config, *data, f"--ckpt_path={student}", f"--metrics_json={tmp_path}/test_k6.json"])
    assert json.loads((tmp_path / "test_k6.json").read_text()) == metrics
    # A constructor's error while the config is built is one line, not jsonargparse's list of every type it tried.
    message = run_error(["test", student_config, *data, f"--ckpt_path={student}", "--model.init_args.sampler.init_args.k=4"],
                        capsys)
    assert message.startswith("error: k=4 is not a multiple of the student's HRNN block_length=3")

    predictions = tmp_path / "predictions.csv"
    run_ok(["predict", student_config, *data, f"--ckpt_path={student}",
            f"--data.predict_files={synthetic_tfrecords}/test*.tfrecord", f"--predictions={predictions}"])
    rows = predictions.read_text().splitlines()
    assert rows[0] == "VideoId,LabelConfidencePairs" and len(rows) == 1 + 16
    pairs = rows[1].split(",")[1].split()
    assert len(pairs) == 2 * SYNTHETIC_CLASSES  # all 8 classes fit in the top 20
    scores = [float(s) for s in pairs[1::2]]
    assert scores == sorted(scores, reverse=True)

    run_ok(["profile", student_config, *data, f"--output={tmp_path}/cost.json"])
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["flops_per_video"] == 2 * cost["macs_per_video"] > 0
    assert cost["params"] > 0 and cost["videos_per_s"] > 0
    # The fit's model summary shows the FLOPs profile counts (Lightning's own count said 0), and not Lightning's note
    # that our summary replaced its default.
    assert f"Total FLOPs: {get_human_readable_count(int(cost['flops_per_video']))}" in fit_output
    assert "Skipping setting a default" not in fit_log and "Seed set to" in fit_log  # (the log was captured)


def test_missing_and_foreign_checkpoints_are_one_line(synthetic_tfrecords, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    teacher_config = f"--config={CONFIGS / 'tiny' / 'teacher_hrnn.yaml'}"
    message = run_error(["test", teacher_config, *data, f"--ckpt_path={tmp_path}/missing.ckpt"], capsys)
    assert "missing.ckpt does not exist" in message

    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    message = run_error(["test", teacher_config, *data, f"--ckpt_path={tmp_path}/corrupt.ckpt"], capsys)
    assert "corrupt.ckpt cannot be read" in message

    teacher = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    parallel_config = f"--config={CONFIGS / 'tiny' / 'parallel_hrnn.yaml'}"
    message = run_error(["test", parallel_config, *data, f"--ckpt_path={teacher}"], capsys)
    assert "holds a TeacherModule but the config builds a DistillModule" in message

    # The same teacher against data with another class count: both sizes are named.
    message = run_error(["test", teacher_config, *data, "--data.num_classes=16", f"--data.store_dir={tmp_path}/s16",
                         f"--ckpt_path={teacher}"], capsys)
    assert "was trained for 8 classes but the data has 16" in message


def test_payload_checkpoints_are_refused_on_every_path(synthetic_tfrecords, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    marker = tmp_path / "payload_ran"
    evil = payload_checkpoint(tmp_path / "evil.ckpt", marker)
    teacher = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    student_config = f"--config={CONFIGS / 'tiny' / 'student_hrnn.yaml'}"
    fit = ["fit", student_config, *data, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
           "--trainer.limit_val_batches=1"]
    for args in (
        ["test", f"--config={CONFIGS / 'tiny' / 'teacher_hrnn.yaml'}", *data, f"--ckpt_path={evil}"],
        [*fit, f"--model.init_args.teacher_checkpoint={evil}"],
        [*fit, f"--model.init_args.teacher_checkpoint={teacher}", f"--model.init_args.init_from={evil}"],
    ):
        message = run_error(args, capsys)
        assert f"checkpoint {evil} holds Python objects" in message and "refused" in message
        assert not marker.exists()


def test_a_checkpoint_of_another_encoder_is_refused_with_both_names(synthetic_tfrecords, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    teacher = teacher_checkpoint("student_hrnn.yaml", synthetic_tfrecords, tmp_path)
    message = run_error(["test", f"--config={CONFIGS / 'tiny' / 'teacher_netvlad.yaml'}", *data,
                         f"--ckpt_path={teacher}"], capsys)
    assert f"checkpoint {teacher} holds a HRNN encoder but the config builds a NetVLAD encoder" in message


def test_runs_log_config_cost_and_metrics(synthetic_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = [a for a in data_args(synthetic_tfrecords, tmp_path / "stores") if not a.startswith("--trainer.logger")]
    run_ok(["fit", f"--config={CONFIGS / 'tiny' / 'baseline_hrnn.yaml'}", *data, "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--run_dir={tmp_path}/logs"])
    (hparams,) = tmp_path.glob("logs/**/hparams.yaml")
    logged = yaml.safe_load(hparams.read_text())
    assert "UniformSampler" in logged["config"] and "k: 6" in logged["config"]
    # Uniform-6 H-RNN: the cost is that of 6 frames, and FLOPs are 2 x MACs.
    assert logged["cost/flops_per_video"] == 2 * logged["cost/macs_per_video"] > 0
    (metrics,) = tmp_path.glob("logs/**/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/loss/ce", "val/gap", "val/map_all_classes"} <= set(header)


def test_help_and_the_data_commands_import_neither_torch_nor_lightning(tmp_path):
    """`vdistill --help`, synth, convert and inspect start without torch or Lightning (issue #11: their start-up is
    a fraction of `import lightning.pytorch`); run for real, in a fresh interpreter, on a small data set."""
    data, store = tmp_path / "data", tmp_path / "train.h5"
    commands = [["--help"], ["synth", f"--output={data}", "--train_videos=8", "--validate_videos=2",
                             "--test_videos=2", "--min_frames=6", "--max_frames=12", "--shards_per_split=1"],
                ["convert", f"--input={data}/train*.tfrecord", f"--output={store}"], ["inspect", f"--store={store}"]]
    code = "\n".join([
        "import sys",
        "from lightning_distill.cli.main import main",
        f"for argv in {commands!r}:",
        "    try:",
        "        main(argv)",
        "    except SystemExit as stop:",
        "        assert not stop.code, (argv, stop.code)",
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'lightning')))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(FrameStore(store)) == 8
