"""Training callbacks: a ``last.ckpt`` that always holds the latest state, and a guard
that stops (or, if asked, skips) non-finite losses and never saves non-finite weights.

``mmctx fit`` registers ``NonFiniteGuard`` by itself (settings under ``nonfinite:``);
the shipped configs list ``LastCheckpoint`` next to a ``RunCheckpoint`` for the best
checkpoints, both in ``<trainer.default_root_dir>/checkpoints``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss, gradient or weight and was stopped."""


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose default folder is ``<trainer.default_root_dir>/checkpoints``,
    the same for every run of a config, instead of the logger's new ``version_N`` folder,
    so a rerun with ``--ckpt_path last`` finds its checkpoints and resuming keeps the best
    ones. Takes ``ModelCheckpoint``'s arguments; an explicit ``dirpath`` wins.
    """

    def resolve_dirpath(self, trainer: L.Trainer) -> Path:
        """The checkpoint folder (``dirpath``, else under ``default_root_dir``)."""
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        return Path(self.dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.resolve_dirpath(trainer)
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(RunCheckpoint):
    """Write ``last.ckpt`` with the latest state after every training epoch (after that
    epoch's validation) and, optionally, every ``every_n_train_steps`` optimizer steps.

    Lightning's own ``ModelCheckpoint(save_last=True, monitor=...)`` refreshes
    ``last.ckpt`` only when it also writes a top-k checkpoint, so after a kill it can hold
    an old epoch; this one overwrites ``last.ckpt`` unconditionally, through a temporary
    file and a rename, so a kill during the write leaves the previous one intact. Keep a
    ``ModelCheckpoint(monitor=...)`` beside it for the best checkpoints.

    Args:
        dirpath: Folder of ``last.ckpt``; keep it the same for every run of one config so
            ``mmctx fit ... --ckpt_path last`` finds it. Default
            ``<trainer.default_root_dir>/checkpoints``.
        every_n_train_steps: Also save every this many optimizer steps
            (``trainer.global_step``; the GAN takes two per batch); 0: only at epoch ends.
    """

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int = 0) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def _skip(self, trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        n = self._every_n_train_steps
        if n < 1 or trainer.global_step % n or self._skip(trainer):
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the epoch's ``last.ckpt`` is written at the epoch's end, after this."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._skip(trainer):  # even if a step save came at this very step: now later
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the last epoch's end has saved already."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not _is_local_file_protocol(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        partial = filepath + ".part"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath


def first_nonfinite(tensors: Iterable[tuple[str, Any]]) -> str | None:
    """Name of the first floating-point tensor holding a NaN or an infinity, or None."""
    named = [(k, v) for k, v in tensors if isinstance(v, Tensor) and v.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(v).all() for _, v in named])  # one sync, not one each
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


class NonFiniteGuard(Callback):
    """Stop training at the first non-finite loss or gradient (or skip that batch), and
    refuse to validate with or save non-finite weights.

    The loss is checked before its backward pass, so with ``action="stop"`` the weights
    are never touched by it; gradients are checked before each optimizer step. Works with
    automatic and manual optimization (``MultimodalGAN``). A checkpoint whose state holds
    a NaN or an infinity is never written, so it can never become the best one.

    Args:
        action: ``"stop"``: raise ``NonFiniteError`` naming the epoch, step and batch
            (``mmctx`` then exits with status 4); ``"skip"``: drop that optimizer step
            (no weight moves), count the batch in ``skipped_batches`` (logged as
            ``train/skipped_batches``) and go on.
        max_skipped: With ``action="skip"``, stop anyway once more than this many batches
            were skipped (None: no limit).
    """

    def __init__(
        self, action: Literal["stop", "skip"] = "stop", max_skipped: int | None = None
    ) -> None:
        if action not in NONFINITE_ACTIONS:
            raise ValueError(f"action must be one of {list(NONFINITE_ACTIONS)}, got {action!r}")
        if max_skipped is not None and max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0 or None, got {max_skipped}")
        self.action = action
        self.max_skipped = max_skipped
        self.skipped_batches = 0
        self._bad: str | None = None  # why the coming optimizer step must not happen
        self._last_skipped: tuple[int, int] | None = None

    @staticmethod
    def _where(trainer: L.Trainer) -> str:
        batch = trainer.fit_loop.epoch_loop.batch_idx
        return f"epoch {trainer.current_epoch}, global step {trainer.global_step}, batch {batch}"

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        raise NonFiniteError(
            f"{what} at {self._where(trainer)}; training stopped (nonfinite.action={self.action!r}"
            + (f", max_skipped={self.max_skipped}" if self.action == "skip" else "")
            + "). No checkpoint was written for this state."
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        what = f"non-finite training loss ({loss.detach().float().mean().item()})"
        if self.action == "stop":
            self._stop(trainer, what)
        self._bad = what

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self._bad is None:
            name = first_nonfinite((str(i), p.grad) for i, p in enumerate(params))
            if name is None:
                return
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self._bad = f"non-finite gradient of {names.get(id(params[int(name)]), 'a parameter')}"
            if self.action == "stop":
                self._stop(trainer, self._bad)
        for p in params:  # an optimizer skips parameters without a gradient
            p.grad = None
        here = (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx)
        if here != self._last_skipped:
            self._last_skipped = here
            self.skipped_batches += 1
            rank_zero_warn(f"skipped the batch at {self._where(trainer)}: {self._bad}")
        self._bad = None
        if self.max_skipped is not None and self.skipped_batches > self.max_skipped:
            self._stop(trainer, f"{self.skipped_batches} batches skipped for non-finite values")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.action == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped_batches), on_step=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        name = first_nonfinite(pl_module.state_dict().items())
        if name is not None:  # before any ModelCheckpoint could rank this state
            self._stop(trainer, f"non-finite weights in {name}")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state: Mapping[str, Any] = checkpoint.get("state_dict", {})
        name = first_nonfinite(state.items())
        if name is not None:
            self._stop(trainer, f"refusing to save a checkpoint with non-finite weights in {name}")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = int(state_dict.get("skipped_batches", 0))
