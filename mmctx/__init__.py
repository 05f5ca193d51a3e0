"""mmctx: multimodal models over long mixed-media inputs.

Layers, each importing only those below it (checked by ``tests/test_architecture.py``)::

    mmctx.cli                 the `mmctx` command: Lightning's CLI plus thin own subcommands
    mmctx.pipelines           LightningModules (classifier, GAN) and runners (infer, export, ...)
    mmctx.encoders            one ModalityEncoder per modality (text, image, audio, video)
    core: mmctx.io            decoders with explicit limits
          mmctx.data          manifests, paths, modalities, datasets, collate, data module
          mmctx.transforms    augmentation per modality, modality dropout
          mmctx.nn            fusion, attention, backbones, pooling, the FusedModel
          mmctx.datasets      the built-in demo, long-context, digits and code-word data
          mmctx.index         a faiss vector index under string ids (retrieval)
          mmctx.checkpoints   weights-only checkpoints and exports

Lightning is imported only by the CLI, the pipelines and the data modules; everything in
``mmctx.nn`` and ``mmctx.encoders`` is a plain ``nn.Module``.
"""

from mmctx.features import FeatureSequence

__version__ = "0.1.0"

__all__ = ["FeatureSequence", "__version__"]
