"""Plain ``nn.Module``s between the encoders and the heads: fusion, attention, backbones.

No Lightning here: everything is usable from plain PyTorch.
"""

from mmctx.nn.backbones import (
    FusionBackbone,
    SegmentMemoryBackbone,
    SlidingWindowBackbone,
    TransformerBackbone,
)
from mmctx.nn.fusion import MultimodalFusion, masked_max, masked_mean

__all__ = [
    "FusionBackbone",
    "MultimodalFusion",
    "SegmentMemoryBackbone",
    "SlidingWindowBackbone",
    "TransformerBackbone",
    "masked_max",
    "masked_mean",
]
