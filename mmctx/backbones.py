"""Fusion backbones: Transformer stacks over the fused multimodal sequence.

A backbone maps a ``FeatureSequence`` ``(b, n, d)`` to another of the same shape and
mask. The attention mechanism is its own small module, so long-context variants swap
only that part.

Shape legend: b = batch, h = heads, n = positions, d = model width, e = head width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmctx.features import FeatureSequence


class DenseAttention(nn.Module):
    """Full multi-head self-attention with a key padding mask (torch SDPA kernels)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (b, h, n, e); the mask lets each query see the valid keys only
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )  # (b, h, n, e)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, attention: nn.Module, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class FusionBackbone(nn.Module):
    """Base of every backbone: ``dim`` is the width the fusion projects to."""

    dim: int

    def forward(self, seq: FeatureSequence) -> FeatureSequence:  # pragma: no cover - abstract
        raise NotImplementedError


class TransformerBackbone(FusionBackbone):
    """Dense Transformer over the whole fused sequence; quadratic in its length.

    Args:
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout on attention weights and residual branches.
        grad_checkpointing: Recompute each block in the backward pass to save memory.
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.dim = dim
        self.blocks = nn.ModuleList(
            TransformerBlock(DenseAttention(dim, heads, dropout), dim, mlp_ratio, dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, seq: FeatureSequence) -> FeatureSequence:
        x, mask = seq
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return FeatureSequence(self.norm(x), mask)
