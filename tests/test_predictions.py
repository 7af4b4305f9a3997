"""Kaggle prediction rows and files, checked against a hand-written row and an independent numpy ranking."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_distill.errors import ConfigError, DataError
from lightning_distill.evaluation.prediction_file import format_prediction_row
from lightning_distill.evaluation.predictions import KagglePredictionWriter


def parse_row(row: str) -> tuple[str, list[int], list[float]]:
    video_id, pairs = row.split(",")
    tokens = pairs.split(" ")
    return video_id, [int(t) for t in tokens[0::2]], [float(t) for t in tokens[1::2]]


def expected_pairs(probs: np.ndarray, top_k: int) -> tuple[list[int], list[float]]:
    """Top-k by descending score, equal scores by class (numpy's stable sort), scores rounded to 6 decimals."""
    top = np.argsort(-probs, kind="stable")[:top_k]
    return top.tolist(), [round(float(probs[c]), 6) for c in top]


def test_hand_written_five_class_row():
    probs = torch.tensor([0.1, 0.5, 0.05, 0.9, 0.5])
    # Best first: class 3 (0.9), then the tie at 0.5 in class order: 1, 4.
    assert format_prediction_row("XyZ9", probs, top_k=3) == "XyZ9,3 0.900000 1 0.500000 4 0.500000"
    # Six decimals, rounded; top_k larger than C lists every class.
    assert format_prediction_row("a", torch.tensor([0.1234567, 0.0000004]), top_k=20) == "a,0 0.123457 1 0.000000"


def test_row_of_3862_classes_parses_back_to_the_top_20():
    probs = np.random.default_rng(0).random(3862, dtype=np.float32)
    video_id, labels, scores = parse_row(format_prediction_row("v1", torch.from_numpy(probs)))
    assert video_id == "v1" and len(labels) == 20 == len(set(labels))
    assert scores == sorted(scores, reverse=True)
    top, top_scores = expected_pairs(probs, 20)
    assert labels == top and scores == pytest.approx(top_scores, abs=1e-9)


def test_ids_that_would_break_the_csv_are_refused():
    with pytest.raises(DataError, match="comma"):
        format_prediction_row("a,b", torch.rand(4))


class UnlabelledVideos(Dataset):
    """Videos with ids and fixed class scores only: no labels, as in the test split."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = torch.from_numpy(probs)

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, index: int) -> dict:
        return {"video_id": f"vid{index:03d}", "scores": self.probs[index]}


def collate(items: list[dict]) -> dict:
    return {"video_ids": [i["video_id"] for i in items], "scores": torch.stack([i["scores"] for i in items])}


class EchoModule(pl.LightningModule):
    """Returns the dataset's scores as probabilities; optionally fails at one batch."""

    def __init__(self, fail_at_batch: int | None = None, output_key: str = "probabilities") -> None:
        super().__init__()
        self.fail_at_batch = fail_at_batch
        self.output_key = output_key

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("simulated crash")
        return {"video_ids": batch["video_ids"], self.output_key: batch["scores"]}


def predict(module: pl.LightningModule, probs: np.ndarray, output: Path, top_k: int = 20) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[KagglePredictionWriter(str(output), top_k=top_k)],
    )
    loader = DataLoader(UnlabelledVideos(probs), batch_size=4, collate_fn=collate)
    trainer.predict(module, dataloaders=loader, return_predictions=False)


def test_trainer_predict_writes_every_video_once(tmp_path: Path):
    probs = np.random.default_rng(1).random((10, 30), dtype=np.float32)
    probs[2, :] = 0.25  # all tied: the first 20 classes in order
    output = tmp_path / "sub" / "predictions.csv"
    predict(EchoModule(), probs, output)

    lines = output.read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs" and len(lines) == 11
    for index, line in enumerate(lines[1:]):
        video_id, labels, scores = parse_row(line)
        top, top_scores = expected_pairs(probs[index], 20)
        assert video_id == f"vid{index:03d}" and labels == top and scores == pytest.approx(top_scores, abs=1e-9)
    assert parse_row(lines[3])[1] == list(range(20))
    assert sorted(p.name for p in output.parent.iterdir()) == ["predictions.csv"]


def test_a_crash_leaves_no_file_that_looks_complete(tmp_path: Path):
    output = tmp_path / "predictions.csv"
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(EchoModule(fail_at_batch=1), np.random.default_rng(2).random((10, 30), dtype=np.float32), output)
    assert list(tmp_path.iterdir()) == []


def test_wrong_predict_step_output_is_a_config_error(tmp_path: Path):
    probs = np.random.default_rng(3).random((4, 30), dtype=np.float32)
    with pytest.raises(ConfigError, match="predict_step must return"):
        predict(EchoModule(output_key="probs"), probs, tmp_path / "p.csv")


def test_two_ranks_join_into_one_file(tmp_path: Path):
    probs = np.random.default_rng(4).random((9, 30), dtype=np.float32)
    output = tmp_path / "predictions.csv"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[KagglePredictionWriter(str(output))],
    )
    loader = DataLoader(UnlabelledVideos(probs), batch_size=2, collate_fn=collate)
    trainer.predict(EchoModule(), dataloaders=loader, return_predictions=False)

    lines = output.read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs" and lines.count(lines[0]) == 1
    rows = {video_id: (labels, scores) for video_id, labels, scores in map(parse_row, lines[1:])}
    assert len(rows) == len(lines) - 1 == 9  # every video exactly once
    for index in range(9):
        labels, scores = rows[f"vid{index:03d}"]
        top, top_scores = expected_pairs(probs[index], 20)
        assert labels == top and scores == pytest.approx(top_scores, abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
