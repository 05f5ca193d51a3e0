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


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding: rotate feature pairs by position-dependent angles.

    Attention scores between rotated queries and keys depend only on the distance
    between positions, so any length works, including lengths never seen in training.

    Args:
        x: ``(..., n, e)`` queries or keys, ``e`` even.
        positions: ``(n,)`` positions (integers, as any dtype).

    Returns:
        ``(..., n, e)`` rotated features, same dtype.
    """
    e = x.shape[-1]
    if e % 2:
        raise ValueError(f"rotary positions need an even head width, got {e}")
    freq = base ** (-torch.arange(0, e, 2, device=x.device, dtype=torch.float32) / e)  # (e/2,)
    angle = positions.to(torch.float32)[:, None] * freq  # (n, e/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]  # (..., n, e/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., n, e/2, 2)
    return out.flatten(-2).to(x.dtype)
