"""A data module that streams shards written by ``mmctx shard`` (LitData's format).

Everything after reading is the manifest path's own: the same modalities, preprocessing
checks, augmentation, per-sample errors, collate, masks and modality dropout
(:class:`~mmctx.data.datamodule.MultimodalDataModule`, which this class extends). What
changes is where samples come from: LitData's ``StreamingDataset`` over a local folder or
an object-store URL (``s3://``, ``gs://``, ...), and :class:`StreamBatches`, which gives
every process of a DDP run a disjoint share of each epoch in the same number of batches,
and stores the stream position in checkpoints so a killed fit resumes mid-epoch.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mmctx.data.batching import StreamBatches
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.data.dataset import Collate
from mmctx.data.manifest import LabelSpace, Sample
from mmctx.data.shards import StoredSamples, check_preprocess, read_metadata
from mmctx.errors import ConfigError
from mmctx.transforms import Augment

if TYPE_CHECKING:
    from litdata import StreamingDataLoader

log = logging.getLogger(__name__)

STREAM_STATE_KEY = "mmctx_stream_state"  # in the data module's part of a checkpoint


def _single(items: list[Any]) -> Any:
    """LitData's collate at ``batch_size=1``: the sample itself (batches form later)."""
    return items[0]


def most_samples_per_rank(total: int, world: int) -> int:
    """What LitData gives the busiest of ``world`` processes, reading one sample at a time:
    ``total // world`` each, and the remainder to the last process."""
    return total // world + total % world


class ShardedDataModule(MultimodalDataModule):
    """Train/val/test/predict data streamed from shards written by ``mmctx shard``.

    Args:
        train_shards: Folder or URL of the training shards.
        val_shards: Validation shards (there is no automatic hold-out: shard a val manifest).
        test_shards: Test shards.
        predict_shards: Shards to predict on.
        cache_dir: Where LitData keeps downloaded chunks of remote shards (default: LitData's).
        storage_options: Passed to LitData for object stores (credentials, endpoint).
        shuffle_buffer: Samples bucketed together under ``max_tokens_per_batch``.
        even_batches: Form batches in the main process so that every process gets the same
            number of them (see :class:`StreamBatches`). Default: only when there are several
            processes; one process collates whole batches in the loader's workers, which is
            faster (collating in the main process competes with the model for its threads).
        **kwargs: Any :class:`MultimodalDataModule` setting except the manifests; the
            preprocessing settings must be those the shards were written with.
    """

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        test_shards: str | None = None,
        predict_shards: str | None = None,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        shuffle_buffer: int = 512,
        even_batches: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_fraction=0.0, **kwargs)
        self.shards = {
            "train": train_shards,
            "val": val_shards,
            "test": test_shards,
            "predict": predict_shards,
        }
        self.cache_dir = cache_dir
        self.storage_options = storage_options or {}
        self.shuffle_buffer = shuffle_buffer
        self.even_batches = even_batches
        self._train_loader: StreamingDataLoader | StreamBatches | None = None
        self._pending_stream_state: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        """Read each split's ``mmctx_shards.json`` and check its preprocessing (once)."""
        self._metadata  # noqa: B018

    @cached_property
    def _metadata(self) -> dict[str, dict[str, Any]]:
        found = {}
        for split, source in self.shards.items():
            if source is None:
                continue
            meta = read_metadata(source, self.storage_options)
            check_preprocess(source, meta, self.preprocess)
            log.info(
                "%s: %d samples (%d rows skipped when sharded)",
                source,
                meta["written"],
                meta["skipped"],
            )
            found[split] = meta
        return found

    @cached_property
    def _splits(self) -> dict[str, list[Sample]]:
        raise ConfigError("ShardedDataModule streams shards; it has no manifest rows")

    @property
    def label_space(self) -> LabelSpace:
        """The label space the shards were written with (or ``classes`` when given)."""
        if self.classes and self.multilabel_setting is not None:
            return LabelSpace(self.classes, self.multilabel_setting)
        labelled = [m for m in self._metadata.values() if m.get("class_names")]
        if not labelled:
            raise ValueError("no labelled shards: set data.classes, or shard labelled data")
        return LabelSpace(self.classes or labelled[0]["class_names"], labelled[0]["multilabel"])

    def dataset(self, split: str, augment: Augment | None = None, *, shuffle: bool = False):
        """LitData's ``StreamingDataset`` over one split, yielding loaded samples."""
        from litdata import StreamingDataset

        source = self.shards.get(split)
        if source is None:
            raise ValueError(f"no data for split '{split}': set data.{split}_shards")
        labels = self.label_space if self._metadata[split].get("class_names") else None
        reader = StoredSamples(
            source, labels, self.modality_handlers, self.preprocess, self.strict, augment
        )
        return StreamingDataset(
            source,
            cache_dir=self.cache_dir,
            shuffle=shuffle,
            drop_last=False,  # no sample lost: StreamBatches evens the batch counts instead
            seed=self.split_seed,
            transform=reader,
            storage_options=self.storage_options,
        )

    def loader(
        self, split: str, *, shuffle: bool = False, augment: Augment | None = None
    ) -> StreamingDataLoader | StreamBatches:
        """Batches of one split: LitData's loader collating in its workers (one process), or
        :class:`~mmctx.data.batching.StreamBatches` (several processes, a token budget).
        Both are resumable mid-epoch: Lightning stores their ``state_dict`` in checkpoints.
        """
        from litdata import StreamingDataLoader

        stream = self.dataset(split, augment, shuffle=shuffle)
        world = stream.distributed_env.world_size  # the processes LitData splits among
        if self.max_tokens_per_batch is not None and world > 1:
            raise ConfigError(
                "max_tokens_per_batch on shards works in one process only (batch counts "
                "would differ between processes); use batch_size with several processes"
            )
        num_classes = len(self.class_names) if self.multilabel else None
        collate = Collate(self.modality_handlers, self.preprocess, num_classes)
        even = self.even_batches if self.even_batches is not None else world > 1
        if not even and self.max_tokens_per_batch is None:
            return StreamingDataLoader(
                stream, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate
            )
        samples = StreamingDataLoader(
            stream, batch_size=1, num_workers=self.num_workers, collate_fn=_single
        )
        return StreamBatches(
            samples,
            collate,
            self.batch_size,
            max_tokens=self.max_tokens_per_batch,
            buffer_size=self.shuffle_buffer,
            seed=self.split_seed,
            most_samples=most_samples_per_rank(self._metadata[split]["written"], world),
        )

    def state_dict(self) -> dict[str, Any]:
        """The data settings (see the parent), plus the training stream's position."""
        state = super().state_dict()
        if self._train_loader is not None:
            state[STREAM_STATE_KEY] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the stream position for the next ``train_dataloader``.

        Lightning restores a stateful loader itself only if the loader is first built after
        the checkpoint is read; a model whose ``configure_optimizers`` asks for
        ``trainer.estimated_stepping_batches`` (the classifier's warm-up schedule) has it
        built earlier, and the position would be lost: a resumed fit would start its epoch
        over. Restoring it here as well covers both orders (loading a state twice is
        harmless: nothing has been read yet)."""
        self._pending_stream_state = state_dict.get(STREAM_STATE_KEY)

    def train_dataloader(self) -> StreamingDataLoader | StreamBatches:
        loader = self.loader("train", shuffle=True, augment=self.augment)
        if self._pending_stream_state is not None:
            loader.load_state_dict(self._pending_stream_state)
            self._pending_stream_state = None
        self._train_loader = loader
        return loader
