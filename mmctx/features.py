"""The one tensor type that flows from encoders through fusion into the backbone.

Shape legend: b = batch, n = sequence positions, d = feature width.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class FeatureSequence(NamedTuple):
    """A batch of feature sequences and the positions that hold real data.

    Attributes:
        features: ``(b, n, d)`` float features.
        mask: ``(b, n)`` bool, True where a position holds data and False for padding
            (and for every position of a sample whose modality is absent).
        globals: ``(b, n)`` bool or None: positions that long-context attention lets see,
            and be seen by, every position (summary tokens). Dense attention ignores it.
    """

    features: Tensor
    mask: Tensor
    globals: Tensor | None = None

    def check(self, name: str) -> FeatureSequence:
        """Raise a ValueError naming ``name`` when the two tensors disagree."""
        if self.features.dim() != 3:
            raise ValueError(
                f"{name}: features must be (b, n, d), got shape {tuple(self.features.shape)}"
            )
        if self.mask.shape != self.features.shape[:2] or self.mask.dtype.is_floating_point:
            raise ValueError(
                f"{name}: mask must be a bool tensor of shape {tuple(self.features.shape[:2])}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        return self
