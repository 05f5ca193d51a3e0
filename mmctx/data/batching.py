"""Batching by a token budget instead of a fixed batch size.

When sample lengths vary by orders of magnitude, a fixed batch size either wastes most
of each batch on padding or runs out of memory on the longest samples. Here samples are
sorted by their estimated fused length (all modalities together), cut into batches
whose padded size ``max length x count`` stays within ``max_tokens``, and the batches
are shuffled each epoch. Under DDP each process takes every ``world``-th batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of indices whose padded token count stays within a budget.

    Args:
        lengths: Estimated fused length of each sample.
        max_tokens: Budget per batch, counted as ``longest sample x batch size``. A sample
            longer than the budget gets a batch of its own.
        shuffle: Shuffle the batch order every epoch (and break ties between equal lengths).
        seed: Seed of the shuffling (combined with the epoch number).
        num_replicas: Processes sharing the batches (default: the DDP world size, or 1).
        rank: This process's index (default: the DDP rank, or 0).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.lengths = [max(1, int(n)) for n in lengths]
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All batches of one epoch, before splitting between processes."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        tie = (
            torch.rand(len(self.lengths), generator=gen)
            if self.shuffle
            else torch.zeros(len(self.lengths))
        )
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], float(tie[i])))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:  # ascending length: the newest sample is the longest of its batch
            if current and self.lengths[i] * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        if self.shuffle:
            batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=gen)]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        per_rank = math.ceil(len(batches) / self.num_replicas)
        batches += batches[: per_rank * self.num_replicas - len(batches)]  # equal count per rank
        yield from batches[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return math.ceil(len(self.batches()) / self.num_replicas)
