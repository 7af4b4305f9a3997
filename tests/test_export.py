"""Export: every family's predicting network as one graph from raw uint8 frames to probabilities, equal to the
Lightning module on real data, and scored without Lightning to the metrics `vdistill test` reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_support import CONFIGS, data_args, run_error, run_ok
from lightning_distill.deployment.export import load_exported

SHORT_FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


@pytest.mark.parametrize(("family", "formats"), [("hrnn", ["onnx", "torchscript"]), ("netvlad", ["onnx"]),
                                                 ("nextvlad", ["onnx"])])
def test_exported_students_match_lightning_and_score_as_vdistill_test(family, formats, synthetic_tfrecords, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")
    config = f"--config={CONFIGS / 'tiny' / f'baseline_{family}.yaml'}"
    run_ok(["fit", config, *data, *SHORT_FIT, "--run_dir=fit"])
    checkpoint = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    run_ok(["test", config, *data, f"--ckpt_path={checkpoint}", "--run_dir=test"])
    expected = json.loads((tmp_path / "test" / "test_metrics.json").read_text())
    for fmt in formats:
        output = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
        capsys.readouterr()
        run_ok(["export", config, *data, f"--ckpt_path={checkpoint}", f"--output={output}", f"--format={fmt}",
                f"--run_dir=export_{fmt}"])
        out = capsys.readouterr().out
        difference = float(out.split("max |difference| vs Lightning")[1].split()[0])
        assert difference <= 1e-4
        _, metadata = load_exported(output)
        assert metadata["num_classes"] == "8" and metadata["frames"] == "6"
        assert json.loads(metadata["sampler"]) == {
            "class_path": "lightning_distill.data.samplers.UniformSampler",
            "init_args": {"k": 6, "over_padded": False, "max_frames": 300},
        }
        metrics = tmp_path / f"score_{fmt}.json"
        run_ok(["score", f"--model={output}", f"--data={synthetic_tfrecords}/test*.tfrecord",
                f"--predictions={tmp_path / 'p.csv'}", f"--metrics_json={metrics}"])
        scored = json.loads(metrics.read_text())
        assert {f"test/{k}": v for k, v in scored.items()} == pytest.approx(expected, abs=1e-5)
        rows = (tmp_path / "p.csv").read_text().splitlines()
        assert rows[0] == "VideoId,LabelConfidencePairs" and len(rows) == 17


def test_an_exported_teacher_takes_its_frames_evenly_spaced(synthetic_tfrecords, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = data_args(synthetic_tfrecords, tmp_path / "stores")  # max_frames 40: a multiple of the blocks (20)
    config = f"--config={CONFIGS / 'tiny' / 'teacher_hrnn.yaml'}"
    run_ok(["export", config, *data, "--output=teacher.onnx"])
    run, metadata = load_exported(tmp_path / "teacher.onnx")
    assert metadata["frames"] == "40" and metadata["module"] == "TeacherModule"
    probabilities = run({"rgb": np.zeros((3, 40, 1024), np.uint8), "audio": np.zeros((3, 40, 128), np.uint8)})
    assert probabilities.shape == (3, 8) and ((probabilities > 0) & (probabilities < 1)).all()
    message = run_error(["export", config, *data, "--output=bad.onnx", "--frames=30"], capsys)
    assert "k=30 is not a multiple of the exported model's HRNN block_length=20" in message
    message = run_error(["export", f"--config={CONFIGS / 'tiny' / 'baseline_hrnn.yaml'}", *data, "--output=x.onnx",
                         "--model.init_args.sampler.init_args.over_padded=true"], capsys)
    assert "over_padded" in message
