"""Pooling: a fused sequence ``(b, n, d)`` becomes one vector ``(b, d)`` per sample.

Shape legend: b = batch, n = positions, d = model width.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmctx.features import FeatureSequence
from mmctx.nn.fusion import masked_max, masked_mean

POOLS = ("mean", "max", "summary", "attention")


class Pooling(nn.Module):
    """One vector per sample from the valid positions of a sequence.

    Args:
        pool: ``"mean"`` over valid positions; ``"max"``, the feature-wise maximum over valid
            positions (for long inputs where the evidence is a few positions among
            thousands); ``"summary"``, the summary token at position 0 (pair it with a
            backbone whose summary token sees everything, such as ``SlidingWindowBackbone``);
            or ``"attention"``, a learned score per position and the softmax-weighted sum
            (learns to find a few telling positions among thousands much sooner).
        dim: Width of the sequence (needed by ``"attention"``).
    """

    def __init__(self, pool: str, dim: int) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
        self.pool = pool
        self.score = nn.Linear(dim, 1) if pool == "attention" else None

    def forward(self, seq: FeatureSequence) -> Tensor:
        """``(b, n, d)`` sequence -> ``(b, d)``."""
        if self.pool == "mean":
            return masked_mean(seq)
        if self.pool == "max":
            return masked_max(seq)
        if self.pool == "summary":
            return seq.features[:, 0]
        weight = self.score(seq.features).squeeze(-1)  # (b, n)
        weight = weight.masked_fill(~seq.mask, float("-inf"))  # position 0 is always valid
        return (weight.softmax(-1)[..., None] * seq.features).sum(1)

    def extra_repr(self) -> str:
        return repr(self.pool)
