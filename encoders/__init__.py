"""Modality encoders: each turns one modality's batch into a feature sequence."""

from mmctx.features import FeatureSequence

from .audio import AudioRNNEncoder
from .base import ModalityEncoder
from .image import ImageCNNEncoder
from .text import TextTransformerEncoder
from .video import VideoCNNEncoder

__all__ = [
    "AudioRNNEncoder",
    "FeatureSequence",
    "ImageCNNEncoder",
    "ModalityEncoder",
    "TextTransformerEncoder",
    "VideoCNNEncoder",
]
