"""The data side: manifests, modalities, decoding to arrays, datasets, collate, batching.

``mmctx.data.datamodule`` (the Lightning data module) and ``mmctx.data.stream_datamodule``
(its LitData-shard variant, ``ShardedDataModule``) are the modules here that import
Lightning; import them by name. ``mmctx.data.shards`` and ``mmctx.data.shard_writer`` hold
the shard format and ``mmctx shard``.
"""

from mmctx.data.dataset import Collate, ManifestDataset, drop_modalities, estimate_length
from mmctx.data.manifest import LabelSpace, ManifestError, Sample, read_manifest
from mmctx.data.modalities import BUILTIN as MODALITIES
from mmctx.data.preprocess import Preprocess, SampleError

__all__ = [
    "MODALITIES",
    "Collate",
    "LabelSpace",
    "ManifestDataset",
    "ManifestError",
    "Preprocess",
    "Sample",
    "SampleError",
    "drop_modalities",
    "estimate_length",
    "read_manifest",
]
