"""Fusion: many per-modality feature sequences become ONE multimodal sequence.

Each modality is projected to the backbone width ``d``, tagged with a learned
modality-type embedding and sinusoidal positions (counted within the modality), and the
sequences are concatenated after a learned summary token. With ``modality_tokens``, each
modality's segment also starts with a learned summary token of its own (valid only where
the modality is present). Summary tokens are flagged in ``globals`` for long-context
attention. Absent modalities contribute only masked positions; nothing is filled in. Each
row's valid positions come first (in order), its padding after them, so what a sample's
positions see does not depend on the lengths of the other samples in its batch.

Shape legend: b = batch, n = positions, d = model width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmctx.features import FeatureSequence
from mmctx.nn.positions import sinusoidal_positions


class MultimodalFusion(nn.Module):
    """Project, tag and concatenate modality sequences behind a summary token.

    Args:
        in_dims: Feature width of each modality's encoder, keyed by modality name.
        dim: Width of the fused sequence (the backbone's width).
        modality_tokens: Start each modality's segment with a learned global token.
    """

    def __init__(self, in_dims: Mapping[str, int], dim: int, modality_tokens: bool = False) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("in_dims is empty: configure at least one encoder")
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.modalities = sorted(in_dims)
        self.dim = dim
        self.proj = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(in_dims[m], dim), nn.LayerNorm(dim))
                for m in self.modalities
            }
        )
        self.type_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(dim) * 0.02) for m in self.modalities}
        )
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.modality_tokens = (
            nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.02) for m in self.modalities})
            if modality_tokens
            else None
        )

    def forward(self, features: Mapping[str, FeatureSequence]) -> FeatureSequence:
        """Fuse the encoders' outputs.

        Args:
            features: One ``FeatureSequence`` ``(b, n_m, d_m)`` per modality in ``in_dims``.

        Returns:
            ``(b, 1 + sum(n_m), d)`` (plus one position per modality with
            ``modality_tokens``), the summary token at position 0 (always valid), each
            row's valid positions before its padding, and ``globals`` flagging the summary
            tokens.
        """
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ValueError(f"fusion expects modalities {self.modalities}, missing {missing}")
        first = features[self.modalities[0]].features
        b, device = first.shape[0], first.device
        parts: list[Tensor] = [self.summary.expand(b, 1, self.dim)]
        masks: list[Tensor] = [torch.ones(b, 1, dtype=torch.bool, device=device)]
        flags: list[Tensor] = [masks[0]]
        for m in self.modalities:
            seq = features[m].check(m)
            n = seq.features.shape[1]
            if self.modality_tokens is not None:
                parts.append((self.modality_tokens[m] + self.type_embed[m]).expand(b, 1, self.dim))
                masks.append(seq.mask.any(1, keepdim=True))  # (b, 1): only where m is present
                flags.append(masks[-1])
            x = self.proj[m](seq.features)  # (b, n_m, d)
            parts.append(
                x + self.type_embed[m] + sinusoidal_positions(n, self.dim, x.device).to(x.dtype)
            )
            masks.append(seq.mask)
            flags.append(torch.zeros_like(seq.mask))
        mask = torch.cat(masks, dim=1)
        return FeatureSequence(
            *(_valid_first(x, mask) for x in (torch.cat(parts, 1), mask, torch.cat(flags, 1)))
        )


def _valid_first(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` ``(b, n, ...)`` with each row's valid positions moved to the front, in order.

    A row's padding then never sits between its own modalities, so local windows and
    relative distances see the same neighbours whatever else is in the batch (a batch of
    one has no padding at all). A scatter by cumulative counts, so it exports to ONNX.
    """
    valid = mask.long()
    slot = torch.where(mask, valid.cumsum(1), valid.sum(1, keepdim=True) + (1 - valid).cumsum(1))
    index = (slot - 1).view(*slot.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.zeros_like(x).scatter(1, index, x)


def masked_mean(seq: FeatureSequence) -> Tensor:
    """Mean over the valid positions.

    Returns:
        ``(b, d)`` pooled features.
    """
    weights = seq.mask.to(seq.features.dtype)[..., None]  # (b, n, 1)
    return (seq.features * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(seq: FeatureSequence) -> Tensor:
    """Feature-wise maximum over the valid positions (zeros for a sequence with none).

    Returns:
        ``(b, d)`` pooled features.
    """
    low = torch.finfo(seq.features.dtype).min
    top = seq.features.masked_fill(~seq.mask[..., None], low).amax(1)
    return torch.where(seq.mask.any(1, keepdim=True), top, torch.zeros_like(top))
