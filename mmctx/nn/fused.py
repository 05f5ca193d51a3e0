"""The fused model: encoders -> fusion -> backbone -> pooling, assembled in this one place.

Every head uses it: the classifier's output layer, the GAN's conditioning, export, and any
later head (distillation, retrieval). It is a plain ``nn.Module``; Lightning is not needed.

Shape legend: b = batch, n = fused positions, d = model width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mmctx.errors import ConfigError
from mmctx.features import FeatureSequence
from mmctx.nn.backbones import FusionBackbone
from mmctx.nn.fusion import MultimodalFusion
from mmctx.nn.pooling import Pooling


class FusedOutput(NamedTuple):
    """What :class:`FusedModel` returns."""

    sequence: FeatureSequence  # the backbone's output, (b, n, d) + mask
    pooled: Tensor  # (b, d)


class FusedModel(nn.Module):
    """One multimodal embedding model: per-modality encoders, fusion, backbone, pooling.

    Args:
        encoders: One encoder per modality, keyed by modality name; each has ``modality``
            (equal to its key) and ``out_dim`` (see ``mmctx.encoders.ModalityEncoder``).
        backbone: The fusion backbone; its ``dim`` is the fused width.
        pool: How the sequence becomes one vector (see :class:`~mmctx.nn.pooling.Pooling`).
    """

    def __init__(
        self, encoders: Mapping[str, nn.Module], backbone: FusionBackbone, pool: str = "mean"
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("encoders is empty: configure at least one encoder")
        for name, enc in encoders.items():
            modality = getattr(enc, "modality", None)
            if name != modality:
                raise ValueError(f"encoders[{name!r}] is a {type(enc).__name__} for {modality!r}")
        self.encoders = nn.ModuleDict(dict(encoders))
        dims = {m: int(e.out_dim) for m, e in encoders.items()}
        self.fusion = MultimodalFusion(dims, backbone.dim, modality_tokens=backbone.global_tokens)
        self.backbone = backbone
        self.pool = Pooling(pool, backbone.dim)
        self.dim = backbone.dim

    @property
    def modalities(self) -> list[str]:
        """The modalities this model reads."""
        return list(self.encoders)

    def check_data(
        self,
        sample_rate: int,
        image_channels: int,
        image_size: int | None = None,
        modalities: Sequence[str] | None = None,
    ) -> None:
        """Refuse data settings that do not fit an encoder, before any batch is read.

        ``modalities``: what the data module loads (None: not known); an encoder of any
        other modality would never get its input.

        Raises:
            ConfigError: A ``ValueError`` naming the encoder's setting, the data's setting and both values.
        """
        problems = []
        unread = [m for m in self.encoders if modalities is not None and m not in modalities]
        if unread:
            problems.append(
                f"encoders {unread} read what the data does not load "
                f"(data.modalities: {list(modalities or ())})"
            )
        for m, enc in self.encoders.items():
            rate = getattr(enc, "sample_rate", None)
            if rate is not None and rate != sample_rate:
                problems.append(
                    f"encoders.{m} expects sample_rate={rate}, the data is resampled to "
                    f"data.sample_rate={sample_rate}"
                )
            channels = getattr(enc, "in_channels", None)
            if channels is not None and channels != image_channels:
                problems.append(
                    f"encoders.{m} expects in_channels={channels}, the data decodes "
                    f"data.image_channels={image_channels}"
                )
            smallest = getattr(enc, "min_image_size", None)
            if image_size is not None and smallest is not None and image_size < smallest:
                problems.append(
                    f"encoders.{m} needs images of at least {smallest} x {smallest} pixels, the "
                    f"data resizes them to data.image_size={image_size}"
                )
        if problems:
            raise ConfigError("; ".join(problems) + ": make each pair fit")

    def sequence(self, inputs: Mapping[str, Any]) -> FeatureSequence:
        """The backbone's output ``(b, n, d)`` for a collated batch's ``inputs``."""
        return self.backbone(self.fuse(inputs))

    def fuse(self, inputs: Mapping[str, Any]) -> FeatureSequence:
        """Encoders and fusion only: the fused sequence ``(b, n, d)`` before the backbone."""
        features = {m: enc(inputs[m]) for m, enc in self.encoders.items()}
        return self.fusion(features)

    def read(self, fused: FeatureSequence, extra: FeatureSequence | None = None) -> FusedOutput:
        """Backbone and pooling over a fused sequence with ``extra`` segments appended.

        Args:
            fused: From :meth:`fuse`, ``(b, n, d)``.
            extra: Further tokens ``(b, m, d)`` already tagged by the caller (e.g. retrieved
                items with a "retrieved" type embedding), read together with ``fused``.

        Returns:
            The backbone's output ``(b, n + m, d)`` and its pooled vector ``(b, d)``.
        """
        if extra is not None:
            extra = extra.check("extra")
            flags = fused.globals
            if flags is not None:
                flags = torch.cat([flags, torch.zeros_like(extra.mask)], dim=1)
            fused = FeatureSequence(
                torch.cat([fused.features, extra.features.to(fused.features.dtype)], dim=1),
                torch.cat([fused.mask, extra.mask], dim=1),
                flags,
            )  # (b, n + m, d)
        seq = self.backbone(fused)
        return FusedOutput(seq, self.pool(seq))

    def forward(self, inputs: Mapping[str, Any]) -> FusedOutput:
        """The fused sequence and its pooled vector ``(b, d)``."""
        seq = self.sequence(inputs)
        return FusedOutput(seq, self.pool(seq))
