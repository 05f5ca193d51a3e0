"""The encoder contract: one ``nn.Module`` per modality, raw batch in, feature sequence out."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from mmctx.features import FeatureSequence


def require_counts(**settings: int) -> None:
    """Raise a ValueError naming the first size or count setting under 1."""
    for name, value in settings.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class ModalityEncoder(nn.Module):
    """Base class of every modality encoder.

    A subclass sets ``modality`` (the manifest key it reads, e.g. ``"audio"``) as a class
    attribute and ``out_dim`` (the width of its features) in ``__init__``, and implements
    ``forward`` taking the collated batch of its modality (see ``mmctx.data.collate``) and
    returning a :class:`~mmctx.features.FeatureSequence` of shape ``(b, n, out_dim)``.
    Samples in which the modality is absent must come out fully masked.
    """

    modality: ClassVar[str]
    out_dim: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "modality", None), str):
            raise TypeError(
                f"{cls.__name__} must set the class attribute `modality` (e.g. 'audio')"
            )

    def forward(self, batch: Any) -> FeatureSequence:  # pragma: no cover - abstract
        raise NotImplementedError
