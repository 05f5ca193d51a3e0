"""mmctx: multimodal models over long mixed-media inputs.

Per-modality encoders (``mmctx.encoders``) turn text, images and audio into feature
sequences; :class:`~mmctx.nn.fusion.MultimodalFusion` joins them into one sequence; a
backbone (``mmctx.nn.backbones``) reads it; LightningModules in ``mmctx.pipelines`` train it.
"""

from mmctx.features import FeatureSequence

__version__ = "0.1.0"

__all__ = ["FeatureSequence", "__version__"]
