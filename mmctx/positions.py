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
