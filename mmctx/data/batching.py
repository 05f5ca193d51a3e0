"""Batching by a token budget instead of a fixed batch size.

When sample lengths vary by orders of magnitude, a fixed batch size either wastes most
of each batch on padding or runs out of memory on the longest samples. Here samples are
sorted by their estimated fused length (all modalities together), cut into batches
whose padded size ``max length x count`` stays within ``max_tokens``, and the batches
are shuffled each epoch. Under DDP each process takes every ``world``-th batch.

:class:`StreamBatches` batches a stream of samples (LitData shards, see
:mod:`mmctx.data.stream_datamodule`): by size with the same number of batches in every
process, or by a token budget within a shuffle buffer.
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


def even_batch_sizes(count: int, num_batches: int, batch_size: int) -> list[int]:
    """Sizes of exactly ``num_batches`` batches of at most ``batch_size`` holding ``count``
    samples: full batches first, at least one sample left for each later batch.

    Raises:
        ValueError: ``count`` samples cannot fill ``num_batches`` batches of that size.
    """
    if not num_batches <= count <= num_batches * batch_size:
        raise ValueError(
            f"{count} samples cannot make {num_batches} batches of 1..{batch_size} samples"
        )
    sizes = []
    for i in range(num_batches):
        size = min(batch_size, count - (num_batches - i - 1))
        sizes.append(size)
        count -= size
    return sizes


class StreamBatches:
    """Batches over a stream of single samples, resumable mid-epoch.

    With a ``batch_size``, every process gets the same number of batches (the most any
    process needs), so a DDP epoch ends on every rank at the same step and no sample is
    dropped or repeated: a process with fewer samples makes some batches smaller. With
    ``max_tokens``, samples are bucketed by length within a shuffle buffer of
    ``buffer_size`` samples (see :class:`TokenBudgetBatchSampler`): the wider the buffer,
    the less padding and the more memory; batch counts then depend on the data, so this is
    for one process only.

    Args:
        samples: An iterable of loaded samples with ``state_dict``/``load_state_dict``
            (LitData's ``StreamingDataLoader`` with ``batch_size=1``) and ``len``.
        collate: Turns a list of loaded samples into a batch.
        batch_size: Samples per batch.
        max_tokens: Token budget per batch instead (``longest x count``).
        buffer_size: Samples bucketed together under a token budget.
        seed: Seed of the batch order under a token budget.
        most_samples: The most samples any process reads in an epoch (default: this
            process's own count, right for one process). Known without communication:
            a ``len`` that all-reduced would pair with other collectives when only some
            processes ask (rank 0's progress bar and summaries do).
    """

    def __init__(
        self,
        samples,
        collate,
        batch_size: int,
        *,
        max_tokens: int | None = None,
        buffer_size: int = 512,
        seed: int = 0,
        most_samples: int | None = None,
    ) -> None:
        self.samples = samples
        self.most_samples = len(samples) if most_samples is None else most_samples
        self.collate = collate
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.buffer_size = buffer_size
        self.seed = seed
        self.batches_done = 0  # in the current epoch (stored in checkpoints)
        self._resume_at = 0  # batches of the epoch a restored state had done already
        self.epoch = 0

    def __len__(self) -> int:
        if self.max_tokens is not None:
            raise TypeError("the number of token-budget batches is known only at the end")
        return math.ceil(self.most_samples / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        # Lightning stops after len() batches without exhausting this generator, so all
        # per-epoch state is set here, at the start, never after the last batch
        self.batches_done, self._resume_at = self._resume_at, 0
        self.epoch += 1
        stream = iter(self.samples)
        if self.max_tokens is not None:
            batches = self._budget(stream)
        else:
            batches = self._even(stream, self.batches_done)
        for batch in batches:
            self.batches_done += 1
            yield self.collate(batch)

    def _even(self, stream: Iterator, start: int) -> Iterator[list]:
        sizes = even_batch_sizes(len(self.samples), len(self), self.batch_size)
        for size in sizes[start:]:
            yield [next(stream) for _ in range(size)]

    def _budget(self, stream: Iterator) -> Iterator[list]:
        buffer: list = []
        for item in stream:
            buffer.append(item)
            if len(buffer) == self.buffer_size:
                yield from self._bucket(buffer)
                buffer = []
        yield from self._bucket(buffer)

    def _bucket(self, buffer: list) -> Iterator[list]:
        lengths = [item.get("length", 1) if isinstance(item, dict) else 1 for item in buffer]
        seed = self.seed + 1000 * self.epoch + self.batches_done
        sampler = TokenBudgetBatchSampler(
            lengths, self.max_tokens, seed=seed, num_replicas=1, rank=0
        )
        for indices in sampler.batches():
            yield [buffer[i] for i in indices]

    def state_dict(self) -> dict:
        return {"samples": self.samples.state_dict(), "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.samples.load_state_dict(state["samples"])
        self._resume_at = int(state["batches_done"])
