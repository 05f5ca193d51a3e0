"""LightningModules and runners assembled from the encoders and the core."""

from .classifier import MultimodalClassifier
from .writers import JsonlPredictionWriter

__all__ = ["JsonlPredictionWriter", "MultimodalClassifier"]
