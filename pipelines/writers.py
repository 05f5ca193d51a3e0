"""Write ``predict`` results to JSON Lines as they are produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Append each predicted record to a JSON Lines file, batch by batch.

    Args:
        path: Output file (default: ``predictions.jsonl`` in the trainer's log folder). With
            several processes, rank ``r > 0`` writes ``<stem>.rank<r>.jsonl``.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._fh: IO[str] | None = None
        self.written = 0

    def _rank_path(self, trainer: L.Trainer) -> Path:
        path = Path(self.path or Path(trainer.log_dir or ".") / "predictions.jsonl")
        if trainer.global_rank == 0:
            return path
        return path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._rank_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in on_predict_end
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction: list[dict[str, Any]], *args: Any
    ) -> None:
        assert self._fh is not None, "on_predict_start opens the file"
        for record in prediction:
            self._fh.write(json.dumps(record) + "\n")
        self.written += len(prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            print(f"wrote {self.written} predictions to {self._rank_path(trainer)}")
