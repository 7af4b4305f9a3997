"""``KagglePredictionWriter``: ``vdistill predict``'s Kaggle prediction file, streamed as predictions arrive, per rank
under DDP (the format: ``evaluation/prediction_file.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_distill.errors import ConfigError
from lightning_distill.evaluation.prediction_file import HEADER, write_rows


class KagglePredictionWriter(Callback):
    """Writes ``trainer.predict``'s results to a Kaggle prediction file, batch by batch.

    A plain ``Callback``, not Lightning's ``BasePredictionWriter``: rows carry their video ids, so the sample
    indices that class collects are not needed (and it warns that it cannot find them in our batch loader).

    Contract: the LightningModule's ``predict_step`` returns ``{"video_ids": list[str] (B ids), "probabilities":
    Tensor (B, C)}``. Call ``trainer.predict(..., return_predictions=False)``, or Lightning also keeps every
    batch's (B, C) probabilities in memory.

    The file appears under its final name only once complete: a single process writes ``<output>.tmp`` and
    renames it at the end; under DDP each rank r writes its rows to ``<output>.rank<r>``, and rank 0 joins
    them (rank order, header once) into ``<output>.tmp`` and renames that. A crash removes this process's
    unfinished files.

    Args:
        output: path of the CSV file to write (its directory is created).
        top_k: classes per video (20 in the Kaggle competitions).
    """

    def __init__(self, output: str, top_k: int = 20) -> None:
        super().__init__()
        if top_k < 1:
            raise ConfigError(f"KagglePredictionWriter needs top_k >= 1, got {top_k}")
        self.output = Path(output)
        self.top_k = top_k
        self._file: IO[str] | None = None
        self._writing: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Rank 0's path: ranks started by an external launcher (torchrun, srun) may have chosen another run dir.
        self.output = Path(trainer.strategy.broadcast(str(self.output)))
        self.output.parent.mkdir(parents=True, exist_ok=True)
        distributed = trainer.world_size > 1
        self._writing = self._rank_part(trainer.global_rank, unfinished=True) if distributed else self._assembly()
        self._file = self._writing.open("w", encoding="utf-8")
        if not distributed:
            self._file.write(HEADER + "\n")

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not (isinstance(prediction, dict) and {"video_ids", "probabilities"} <= prediction.keys()):
            raise ConfigError(
                f"{type(pl_module).__name__}.predict_step must return "
                "{'video_ids': list[str], 'probabilities': Tensor (B, C)} for KagglePredictionWriter"
            )
        assert self._file is not None, "on_predict_start opens the file"
        write_rows(self._file, prediction["video_ids"], prediction["probabilities"], self.top_k)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._file is not None and self._writing is not None, "on_predict_start opens the file"
        self._file.close()
        self._file = None
        if trainer.world_size == 1:
            os.replace(self._assembly(), self.output)
            return
        # The rename marks a rank's rows complete; the barrier lets rank 0 wait for every rank's.
        os.replace(self._writing, self._rank_part(trainer.global_rank, unfinished=False))
        trainer.strategy.barrier("kaggle_prediction_parts")
        if trainer.global_rank == 0:
            self._join_rank_parts(trainer.world_size)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writing is not None:
            self._writing.unlink(missing_ok=True)

    def _join_rank_parts(self, world_size: int) -> None:
        """Rank 0: header + every rank's rows, in rank order, into the assembly file, then the final name."""
        parts = [self._rank_part(rank, unfinished=False) for rank in range(world_size)]
        with self._assembly().open("w", encoding="utf-8") as joined:
            joined.write(HEADER + "\n")
            for part in parts:
                with part.open(encoding="utf-8") as rows:
                    shutil.copyfileobj(rows, joined)
        os.replace(self._assembly(), self.output)
        for part in parts:
            part.unlink()

    def _assembly(self) -> Path:
        return self.output.with_name(self.output.name + ".tmp")

    def _rank_part(self, rank: int, *, unfinished: bool) -> Path:
        return self.output.with_name(f"{self.output.name}.rank{rank}" + (".tmp" if unfinished else ""))
