"""Position encodings shared by encoders and fusion.

Sinusoidal positions need no maximum length, so sequences longer than any seen in
training still get well-defined positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None) -> Tensor:
    """The classic sine/cosine table.

    Returns:
        ``(n, dim)`` float32 positions, position ``i`` in row ``i``.
    """
    if dim % 2:
        raise ValueError(f"dim must be even for sinusoidal positions, got {dim}")
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (dim/2,)
    table = torch.empty(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0, dim: int = -2) -> Tensor:
    """Rotary position embedding: rotate feature pairs by position-dependent angles.

    Attention scores between rotated queries and keys depend only on the distance
    between positions, so any length works, including lengths never seen in training.
    Features ``2i`` and ``2i + 1`` form a pair, rotated by ``position * base^(-2i/e)``.

    Args:
        x: ``(..., e)`` queries or keys, ``e`` even, positions along ``dim`` (any layout:
            a permuted view is read in place, so queries and keys can be rotated together
            in the projection's own ``(b, n, 2, h, e)`` layout with ``dim=1``).
        positions: ``(n,)`` positions (integers, as any dtype), ``n = x.shape[dim]``.
        dim: The dimension of ``x`` that holds the positions.

    Returns:
        Rotated features, the shape and dtype of ``x``.
    """
    e = int(x.shape[-1])  # a constant when traced for export
    if e % 2:
        raise ValueError(f"rotary positions need an even head width, got {e}")
    freq = base ** (-torch.arange(0, e, 2, device=x.device, dtype=torch.float32) / e)  # (e/2,)
    angle = positions.to(torch.float32)[:, None, None] * freq[:, None].expand(-1, 2)
    angle = angle.reshape(-1, e)  # (n, e): each pair's angle twice
    cos, sin = angle.cos(), angle.sin()
    sin[:, 0::2].neg_()  # pair (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
    trailing = x.dim() - 1 - (dim % x.dim())  # dims between the positions and the features
    cos, sin = (t.view(t.shape[0], *(1,) * (trailing - 1), e) for t in (cos, sin))
    xf = x.float()
    swapped = xf.unflatten(-1, (e // 2, 2)).flip(-1).flatten(-2)  # (x2, x1) per pair
    return torch.addcmul(xf * cos, swapped, sin).to(x.dtype)
