"""LightningModules and runners assembled from the encoders and the core."""

from .callbacks import LastCheckpoint, NonFiniteError, NonFiniteGuard, RunCheckpoint
from .classifier import MultimodalClassifier
from .gan import Discriminator, Generator, MultimodalGAN
from .inference import Predictor
from .writers import JsonlPredictionWriter

__all__ = [
    "Discriminator",
    "Generator",
    "JsonlPredictionWriter",
    "LastCheckpoint",
    "MultimodalClassifier",
    "MultimodalGAN",
    "NonFiniteError",
    "NonFiniteGuard",
    "Predictor",
    "RunCheckpoint",
]
