"""Callbacks for the multi-process and resume tests: which sample ids each rank trained on,
and a kill in the middle of an epoch."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L


class RecordTrainIds(L.Callback):
    """Appends one line per training batch to ``ids-rank<R>.jsonl``: world size and ids.

    Args:
        out: Folder for the files.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"world": trainer.world_size, "ids": list(batch["ids"])})
        with open(self.out / f"ids-rank{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(line + "\n")


class KillAtStep(L.Callback):
    """SIGKILLs its own process when a batch starts after ``step`` optimizer steps (after
    the checkpoint of step ``step`` was written): a crash in the middle of an epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
