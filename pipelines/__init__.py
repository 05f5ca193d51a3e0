"""LightningModules and runners assembled from the encoders and the core.

``MultimodalClassifier`` and ``MultimodalGAN`` put a head on the one ``FusedModel``
(``mmctx.nn.fused``); ``Predictor`` (``mmctx infer``), export, robustness, augment-preview
compress (``mmctx compress``) and the GAN's generate / gan-eval are library functions under
thin commands; ``DistillationClassifier`` trains a student on a teacher's soft targets.
"""

from mmctx.nn.gan import Discriminator, Generator

from .callbacks import LastCheckpoint, NonFiniteError, NonFiniteGuard, RunCheckpoint
from .classifier import MultimodalClassifier
from .distill import DistillationClassifier
from .gan import MultimodalGAN
from .gan_targets import AudioTarget, GanTarget, ImageTarget
from .inference import Predictor
from .retrieval_classifier import RetrievalClassifier
from .writers import JsonlPredictionWriter

__all__ = [
    "AudioTarget",
    "Discriminator",
    "DistillationClassifier",
    "GanTarget",
    "Generator",
    "ImageTarget",
    "JsonlPredictionWriter",
    "LastCheckpoint",
    "MultimodalClassifier",
    "MultimodalGAN",
    "NonFiniteError",
    "NonFiniteGuard",
    "Predictor",
    "RetrievalClassifier",
    "RunCheckpoint",
]
