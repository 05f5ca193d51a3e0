"""A callback for the multi-process tests: which sample ids each rank trained on."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class RecordTrainIds(L.Callback):
    """Writes ``ids-rank<R>.json``: the ids of every training batch of this rank, by epoch.

    Args:
        out: Folder for the files.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.batches: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(list(batch["ids"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"ids-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world": trainer.world_size, "batches": self.batches}))
