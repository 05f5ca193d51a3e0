"""Fit a tiny backbone classifier for a few steps and save its final weights.

Run by ``tests/test_fsdp.py`` as ``python tests/fsdp_run.py ACCELERATOR STRATEGY DEVICES BATCH OUT``,
so that Lightning can launch the extra processes of a multi-process strategy itself.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mmctx.features import FeatureSequence
from mmctx.nn.backbones import TransformerBackbone, TransformerBlock

STEPS = 4


class TinyClassifier(L.LightningModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        torch.manual_seed(0)  # the same initial weights in every process and run
        self.backbone = TransformerBackbone(dim=16, depth=2, heads=2, dropout=0.0)
        self.head = nn.Linear(16, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch  # (b, n, d), (b,)
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        fused = self.backbone(FeatureSequence(x, mask, None)).features
        return nn.functional.cross_entropy(self.head(fused.mean(1)), y)

    def train_dataloader(self) -> DataLoader:
        """Rank r of w takes samples r, r + w, ... in order: each step's w part-batches are
        together the one-process run's batch of w times the size."""
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 6, 16, generator=gen), torch.randint(0, 3, (64,), generator=gen)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(range(64), world, rank, shuffle=False)
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, sampler=sampler)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def main(accelerator: str, strategy: str, devices: int, batch_size: int, out: str) -> None:
    if strategy == "fsdp":  # the recipe of configs/fsdp.yaml: one FSDP unit per block
        chosen = FSDPStrategy(
            auto_wrap_policy={TransformerBlock},
            activation_checkpointing_policy={TransformerBlock},
            state_dict_type="full",
        )
    else:
        chosen = strategy
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=chosen, max_steps=STEPS,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(TinyClassifier(batch_size))
    state = trainer.strategy.lightning_module_state_dict()  # gathered from the shards
    if trainer.global_rank == 0:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
