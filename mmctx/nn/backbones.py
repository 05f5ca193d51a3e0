"""Fusion backbones: Transformer stacks over the fused multimodal sequence.

A backbone maps a ``FeatureSequence`` ``(b, n, d)`` to another of the same shape and
mask. Each long-context mechanism is its own small piece, composed by choosing a class:

- :class:`TransformerBackbone`: dense attention (torch SDPA), quadratic in ``n``.
- :class:`SlidingWindowBackbone`: Longformer-style local attention within ``window``
  positions plus global tokens that see and are seen by all; linear in ``n``.
- :class:`SegmentMemoryBackbone`: Transformer-XL-style recurrence: the sequence is read in
  segments, each attending to itself and to a cache of the previous segment's hidden
  states (gradient stopped through the cache); memory bounded by the segment length.

All use rotary positions inside attention (relative: lengths never seen in training
work) and can recompute blocks in the backward pass (``grad_checkpointing``).

Shape legend: b = batch, h = heads, n = positions, m = memory positions, d = model
width, e = head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmctx.features import FeatureSequence
from mmctx.nn.attention import sliding_window_attention
from mmctx.nn.positions import apply_rotary


class _SelfAttention(nn.Module):
    """Shared projections of the attention variants; subclasses implement ``attend``."""

    def __init__(self, dim: int, heads: int, rotary: bool = True) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.rotary = rotary
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: Tensor, parts: slice = slice(0, 3)) -> list[Tensor]:
        """Project ``(b, n, d)`` to the chosen ones of q, k, v, each ``(b, h, n, e)``.

        ``qkv`` is called as a layer (so compression finds it and can swap it: factorised,
        quantised, or with heads pruned, ``h * e`` narrower than ``d``). For a subset of the
        parts (the segment memory needs no queries) a plain ``nn.Linear`` computes only
        those; a swapped-in layer is called whole and the rest dropped."""
        b, n, _ = x.shape
        if parts != slice(0, 3) and type(self.qkv) is nn.Linear:
            w = self.qkv.weight.view(3, -1, x.shape[-1])[parts]  # (3', h * e, d)
            bias = None if self.qkv.bias is None else self.qkv.bias.view(3, -1)[parts].flatten()
            proj = F.linear(x, w.flatten(0, 1), bias).view(b, n, w.shape[0], self.heads, -1)
        else:
            proj = self.qkv(x).view(b, n, 3, self.heads, -1)[:, :, parts]  # (b, n, 3', h, e)
        return list(proj.permute(2, 0, 3, 1, 4).unbind(0))

    def split_rotated(self, x: Tensor) -> list[Tensor]:
        """q, k, v ``(b, h, n, e)`` of ``(b, n, d)``, queries and keys already rotated.

        The rotation runs once over q and k in the projection's ``(b, n, 2, h, e)`` layout
        (head features contiguous), about 3x faster than rotating the permuted q and k."""
        if not self.rotary:
            return self.split(x)
        b, n, _ = x.shape
        proj = self.qkv(x).view(b, n, 3, self.heads, -1)
        pos = torch.arange(n, device=x.device)
        qk = apply_rotary(proj[:, :, :2], pos, dim=1).permute(2, 0, 3, 1, 4)
        return [*qk.unbind(0), proj[:, :, 2].transpose(1, 2)]

    def merge(self, y: Tensor) -> Tensor:
        b, h, n, e = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * e))  # (b, h, n, e) -> (b, n, d)

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary positions; queries are the last ``n_q`` of the ``n_k`` key positions."""
        if not self.rotary:
            return q, k
        n_q, n_k = q.shape[2], k.shape[2]
        pos = torch.arange(n_k, device=q.device)
        return apply_rotary(q, pos[n_k - n_q :]), apply_rotary(k, pos)


class DenseAttention(_SelfAttention):
    """Full multi-head attention (torch SDPA), optionally also over a memory of past states.

    Args:
        dim: Model width.
        heads: Attention heads.
        dropout: Dropout on the attention weights.
        rotary: Rotary positions on queries and keys.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, rotary: bool = True) -> None:
        super().__init__(dim, heads, rotary)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        globals: Tensor | None = None,
    ) -> Tensor:
        """``globals`` is accepted for a common signature: dense attention sees everything."""
        keep = mask
        if memory is None:
            q, k, v = self.split_rotated(x)  # (b, h, n, e)
        else:
            q, k, v = self.split(x)
            k_mem, v_mem = self.split(memory, slice(1, 3))  # (b, h, m, e)
            k, v = torch.cat((k_mem, k), dim=2), torch.cat((v_mem, v), dim=2)
            keep = torch.cat((memory_mask, mask), dim=1)  # (b, m + n)
            q, k = self.rotate(q, k)
        # A row with no valid key at all (pure padding) would give NaN; let it read anything,
        # its output is masked downstream.
        keep = keep | ~keep.any(1, keepdim=True)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keep[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.merge(y)


class SlidingWindowAttention(_SelfAttention):
    """Longformer-style attention: ``|i - j| <= window`` plus global tokens (no dropout).

    Args:
        dim: Model width.
        heads: Attention heads.
        window: One-sided window: position i sees positions i - window .. i + window.
        rotary: Rotary positions on queries and keys.
    """

    def __init__(self, dim: int, heads: int, window: int, rotary: bool = True) -> None:
        super().__init__(dim, heads, rotary)
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        globals: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        if memory is not None:
            raise ValueError("sliding-window attention keeps no segment memory")
        q, k, v = self.split_rotated(x)  # (b, h, n, e)
        y = sliding_window_attention(
            q, k, v, self.window, key_padding_mask=~mask, global_mask=globals
        )
        return self.merge(y)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, attention: nn.Module, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio must make the MLP at least 1 wide, got {mlp_ratio}")
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor, memory: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        if memory is not None:
            memory = self.norm1(memory)
        x = x + self.drop(self.attn(self.norm1(x), mask, memory=memory, **kwargs))
        return x + self.drop(self.mlp(self.norm2(x)))


class FusionBackbone(nn.Module):
    """A stack of Transformer blocks; subclasses choose the attention.

    Attributes:
        dim: The width the fusion projects to.
        global_tokens: Whether the fusion should add a global summary token per modality
            (only long-context attention makes use of them).
    """

    global_tokens: bool = False

    def __init__(
        self,
        dim: int,
        depth: int,
        mlp_ratio: float,
        dropout: float,
        grad_checkpointing: bool,
        make_attention: Callable[[], nn.Module],
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.dim = dim
        self.blocks = nn.ModuleList(
            TransformerBlock(make_attention(), dim, mlp_ratio, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpointing = grad_checkpointing
        if zero_init_residual:  # every block starts as the identity (as in Fixup / SkipInit)
            for block in self.blocks:
                for last in (block.attn.out, block.mlp[-1]):
                    nn.init.zeros_(last.weight)
                    nn.init.zeros_(last.bias)

    def run_block(self, block: nn.Module, x: Tensor, mask: Tensor, **kwargs: Any) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, mask, use_reentrant=False, **kwargs)
        return block(x, mask, **kwargs)

    def forward(self, seq: FeatureSequence) -> FeatureSequence:
        x = seq.features
        for block in self.blocks:
            x = self.run_block(block, x, seq.mask, globals=seq.globals)
        return FeatureSequence(self.norm(x), seq.mask, seq.globals)


class TransformerBackbone(FusionBackbone):
    """Dense attention over the whole fused sequence; time and memory quadratic in its length.

    Args:
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout on attention weights and residual branches.
        rotary: Rotary positions inside attention.
        grad_checkpointing: Recompute each block in the backward pass to save memory.
        zero_init_residual: Start every block as the identity (zero output projections of
            attention and MLP). Helps a deep stack learn to carry one telling position
            through thousands (the long-context demo needs it).
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        rotary: bool = True,
        grad_checkpointing: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(
            dim,
            depth,
            mlp_ratio,
            dropout,
            grad_checkpointing,
            lambda: DenseAttention(dim, heads, dropout, rotary),
            zero_init_residual,
        )


class SlidingWindowBackbone(FusionBackbone):
    """Longformer-style: local attention within ``window`` plus global summary tokens.

    Time and memory grow linearly with the sequence length. The fusion adds one global
    token per modality besides its overall summary token.

    Args:
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads.
        window: One-sided attention window (positions i - window .. i + window).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout on residual branches.
        rotary: Rotary positions inside attention.
        grad_checkpointing: Recompute each block in the backward pass to save memory.
        zero_init_residual: Start every block as the identity (zero output projections of
            attention and MLP). Helps a deep stack learn to carry one telling position
            through thousands (the long-context demo needs it).
    """

    global_tokens = True

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        window: int = 256,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        rotary: bool = True,
        grad_checkpointing: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(
            dim,
            depth,
            mlp_ratio,
            dropout,
            grad_checkpointing,
            lambda: SlidingWindowAttention(dim, heads, window, rotary),
            zero_init_residual,
        )


class SegmentMemoryBackbone(FusionBackbone):
    """Transformer-XL-style segment recurrence over a sequence of any length.

    The sequence is read ``segment`` positions at a time; in every layer a segment
    attends to itself and to the last ``memory`` hidden states that entered that layer
    for the previous segment (detached: no gradient flows into the past). With
    ``segment >= n`` it is exactly dense attention.

    Args:
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads.
        segment: Positions per segment.
        memory: Cached positions per layer (default: ``segment``).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: Dropout on attention weights and residual branches.
        rotary: Rotary positions inside attention.
        grad_checkpointing: Recompute each block in the backward pass to save memory.
        zero_init_residual: Start every block as the identity (zero output projections of
            attention and MLP). Helps a deep stack learn to carry one telling position
            through thousands (the long-context demo needs it).
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        segment: int = 512,
        memory: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        rotary: bool = True,
        grad_checkpointing: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        if segment <= 0:
            raise ValueError(f"segment must be > 0, got {segment}")
        if memory is not None and memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        super().__init__(
            dim,
            depth,
            mlp_ratio,
            dropout,
            grad_checkpointing,
            lambda: DenseAttention(dim, heads, dropout, rotary),
            zero_init_residual,
        )
        self.segment = segment
        self.memory = segment if memory is None else memory

    def forward(self, seq: FeatureSequence) -> FeatureSequence:
        outputs = []
        cache: list[Tensor | None] = [None] * len(self.blocks)
        cache_mask: Tensor | None = None
        for start in range(0, seq.features.shape[1], self.segment):
            h = seq.features[:, start : start + self.segment]  # (b, s, d)
            mask = seq.mask[:, start : start + self.segment]
            new_cache = []
            for i, block in enumerate(self.blocks):
                new_cache.append(h.detach()[:, h.shape[1] - self.memory :] if self.memory else None)
                h = self.run_block(block, h, mask, memory=cache[i], memory_mask=cache_mask)
            cache = new_cache
            cache_mask = mask[:, mask.shape[1] - self.memory :] if self.memory else None
            outputs.append(h)
        return FeatureSequence(self.norm(torch.cat(outputs, dim=1)), seq.mask, seq.globals)
