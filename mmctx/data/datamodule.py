"""Lightning data modules: manifests on disk, or the built-in demo data generated once.

The module reads the manifests once, infers the label space from every labelled split,
and exposes ``class_names`` and ``multilabel`` so the CLI can hand them to the model.
Rows that cannot be used are reported (file, line, cause) with a count at the end of
parsing; ``strict=True`` stops at the first one instead.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmctx.checkpoints import DATA_SETTINGS_KEY
from mmctx.data.batching import TokenBudgetBatchSampler
from mmctx.data.dataset import (
    Collate,
    ManifestDataset,
    drop_modalities,
    estimate_length,
)
from mmctx.data.manifest import LabelSpace, ManifestError, Sample, read_manifest
from mmctx.data.modalities import (
    BUILTIN,
    AudioModality,
    ImageModality,
    Modality,
    modality_names,
    modality_spec,
    resolve_modalities,
)
from mmctx.data.preprocess import Preprocess
from mmctx.errors import ConfigError
from mmctx.io import Limits
from mmctx.transforms import Augment, ModalityDropout, Transform

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "predict")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class MultimodalDataModule(L.LightningDataModule):
    """Train/val/test/predict data from JSON Lines manifests.

    Args:
        train_manifest: Training manifest.
        val_manifest: Validation manifest; without one, ``val_fraction`` of the training rows
            are held out (seeded by ``split_seed``).
        test_manifest: Test manifest.
        predict_manifest: Manifest to predict on (labels optional).
        val_fraction: Share of training rows held out when there is no ``val_manifest``.
        split_seed: Seed of that split.
        classes: Class names in index order; inferred from the labels when not given.
        multilabel: Multi-label (True) or single-label (False) data; None: multi-label only
            if every labelled row is a list. A label that does not fit the one label space
            (see :meth:`~mmctx.data.manifest.LabelSpace.infer`) is a skipped, reported row.
        root: Folder every manifest path must stay inside (default: each manifest's own
            folder); a path that leaves it is a skipped, reported row.
        modalities: Modalities to load (default: the built-ins text, image, audio, video).
            Each is a registered name (built-ins, :func:`~mmctx.data.modalities.register_modality`,
            or the ``mmctx.data.modalities`` entry points of installed plugins) or a
            :class:`~mmctx.data.modalities.Modality` instance, in YAML
            ``{class_path: my_pkg.SensorModality, init_args: {...}}``.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        image_size: Images are resized to this square size.
        image_channels: 1 (grayscale) or 3 (RGB).
        sample_rate: Audio is resampled to this rate.
        max_image_pixels: Larger images are rejected before decoding.
        max_audio_seconds: Longer audio is rejected before reading (or cropped, below).
        max_text_chars: Longer texts are rejected.
        crop_long_audio: Keep the first ``max_audio_seconds`` of longer audio instead of
            rejecting it; only that part is read from the file.
        strict: Stop at the first bad row or file instead of skipping and reporting it.
        max_tokens_per_batch: Batch by a token budget instead of ``batch_size``: samples of
            similar estimated fused length are grouped so that ``longest x count`` stays
            within it (see :class:`~mmctx.data.batching.TokenBudgetBatchSampler`).
        tokens_per_audio_second: Fused positions per second of audio, for that estimate.
        tokens_per_image: Fused positions per image, for that estimate.
        video_fps: Video frames are sampled at this rate (frames per second).
        video_max_frames: Frames kept per video file (the first ones, at ``video_fps``).
        augment: Transforms from :mod:`mmctx.transforms` applied to training samples only
            (e.g. ``{class_path: mmctx.transforms.AddNoise, init_args: {snr_db: 10}}``).
        modality_dropout: Per-modality probability of removing that modality from a
            training sample (never all of a sample's modalities), e.g. ``{text: 0.3}``.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        predict_manifest: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        classes: list[str] | None = None,
        multilabel: bool | None = None,
        root: str | None = None,
        modalities: list[str | Modality] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 32,
        image_channels: int = 3,
        sample_rate: int = 16000,
        max_image_pixels: int = 50_000_000,
        max_audio_seconds: float = 600.0,
        max_text_chars: int = 1_000_000,
        crop_long_audio: bool = False,
        strict: bool = False,
        max_tokens_per_batch: int | None = None,
        tokens_per_audio_second: float = 50.0,
        tokens_per_image: int = 16,
        augment: list[Transform] | None = None,
        modality_dropout: dict[str, float] | None = None,
        video_fps: float = 4.0,
        video_max_frames: int = 16,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.modality_handlers = self._modality_handlers(
            modalities, tokens_per_audio_second, tokens_per_image
        )
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("image_size", image_size, 1),
            ("max_tokens_per_batch", max_tokens_per_batch, 1),
        ):
            if value is not None and (not _is_int(value) or value < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.manifests = {
            "train": train_manifest,
            "val": val_manifest,
            "test": test_manifest,
            "predict": predict_manifest,
        }
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.classes = classes
        self.multilabel_setting = multilabel
        self.root = root
        self.modalities = tuple(m.name for m in self.modality_handlers)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.strict = strict
        self.max_tokens_per_batch = max_tokens_per_batch
        self.preprocess = Preprocess(
            image_size,
            image_channels,
            sample_rate,
            Limits(max_image_pixels, max_audio_seconds, max_text_chars, crop_long_audio),
            video_fps,
            video_max_frames,
        )
        self.augment = Augment(augment, sample_rate) if augment else None
        unread = sorted(set(modality_dropout or {}) - set(self.modalities))
        if unread:  # a typo would otherwise drop nothing, without a word
            raise ValueError(
                f"modality_dropout names {unread}, which the data does not read "
                f"(modalities: {list(self.modalities)})"
            )
        self.modality_dropout = ModalityDropout(modality_dropout) if modality_dropout else None
        self.skipped: list[str] = []

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the preprocessing a model needs at inference time."""
        try:
            class_names: list[str] | None = self.class_names
        except ValueError:  # no labelled manifest (e.g. a predict-only data module)
            class_names = None
        settings = {
            # names of built-ins, {class_path, init_args} of plugins (resolve_modalities)
            "modalities": [modality_spec(m) for m in self.modality_handlers],
            "preprocess": dataclasses.asdict(self.preprocess),
            "class_names": class_names,
        }
        return {DATA_SETTINGS_KEY: settings}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the settings come from the config (see ``state_dict``)."""

    @staticmethod
    def _modality_handlers(
        modalities: list[str | Modality] | None, audio_rate: float, image_rate: int
    ) -> tuple[Modality, ...]:
        rated = {"image": ImageModality(image_rate), "audio": AudioModality(audio_rate)}
        specs = list(BUILTIN if modalities is None else modalities)
        known = modality_names()
        unknown = [m for m in specs if isinstance(m, str) and m not in known]
        if unknown:
            raise ValueError(
                f"modalities {unknown} are not known; choose from {list(known)}, or give a "
                "plugin as {class_path: my_pkg.MyModality} (see docs/extending.md)"
            )
        return resolve_modalities([rated.get(m, m) if isinstance(m, str) else m for m in specs])

    def use_generated(self, paths: dict[str, Path]) -> None:
        """Read train/val/test from generated manifests; predict on test unless told otherwise."""
        self.manifests.update({split: str(paths[split]) for split in ("train", "val", "test")})
        self.manifests["predict"] = self.manifests["predict"] or self.manifests["test"]

    def prepare_data(self) -> None:
        """Nothing to write for manifests on disk; the built-in datasets generate theirs here."""

    def setup(self, stage: str) -> None:
        """Read and check the manifests (once; later calls reuse them)."""
        self._splits  # noqa: B018

    @cached_property
    def _splits(self) -> dict[str, list[Sample]]:
        """Parsed rows of every split (read once, on first use)."""
        self.prepare_data()  # a no-op unless the data is generated and not there yet
        splits: dict[str, list[Sample]] = {}
        for split, path in self.manifests.items():
            if path is None:
                continue
            try:
                samples, problems = read_manifest(
                    self._resolve(path),
                    strict=self.strict,
                    modalities=self.modality_handlers,
                    root=None if self.root is None else self._resolve(self.root),
                )
            except OSError as err:  # missing, a folder, unreadable: the run cannot start
                raise ConfigError(f"data.{split}_manifest: {err}") from err
            self.skipped.extend(problems)
            splits[split] = samples
        self._label_space = self._check_labels(splits)
        if "train" in splits and "val" not in splits and self.val_fraction > 0:
            splits["train"], splits["val"] = self._hold_out(splits["train"])
        return splits

    def _resolve(self, path: str) -> Path:
        return Path(path).expanduser()

    def _hold_out(self, samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        order = torch.randperm(
            len(samples), generator=torch.Generator().manual_seed(self.split_seed)
        )
        n_val = max(1, round(len(samples) * self.val_fraction))
        val = set(order[:n_val].tolist())
        return [s for i, s in enumerate(samples) if i not in val], [
            s for i, s in enumerate(samples) if i in val
        ]

    def _check_labels(self, splits: dict[str, list[Sample]]) -> LabelSpace | ValueError:
        """The one label space of every split; rows whose label does not fit are removed
        from ``splits`` and reported (or raised, in strict mode). Predict rows do not
        shape the space but are checked against it."""
        # SPLITS order: the train/val/test labels (which shape the space) come first
        labelled = [s for split in SPLITS for s in splits.get(split, []) if s.label is not None]
        n_shaping = len(labelled) - sum(s.label is not None for s in splits.get("predict", []))
        shaping_labels = [s.label for s in labelled[:n_shaping]]
        problems: dict[int, str] = {}
        try:
            space = LabelSpace.infer(
                shaping_labels,
                self.classes,
                multilabel=self.multilabel_setting,
                on_error=problems.setdefault,
            )
        except ValueError as err:  # no usable label at all: only a predict-only module works
            return err
        for i, sample in enumerate(labelled[n_shaping:], start=n_shaping):
            try:
                space.encode(sample.label)
            except ValueError as err:
                problems[i] = str(err)
        bad = {id(labelled[i]): message for i, message in problems.items()}
        if not bad:
            return space
        for split, samples in splits.items():
            kept = []
            for sample in samples:
                if id(sample) not in bad:
                    kept.append(sample)
                    continue
                message = f"{sample.source}:{sample.line}: {bad[id(sample)]}"
                if self.strict:
                    raise ManifestError(message)
                self.skipped.append(message)
                log.warning("skipped %s", message)
            splits[split] = kept
        log.warning("skipped %d rows whose label does not fit the label space", len(bad))
        return space

    @property
    def label_space(self) -> LabelSpace:
        """The one label space of the data (see :meth:`LabelSpace.infer`).

        Raises:
            ValueError: No manifest has a usable label and ``classes`` is not given.
        """
        if "_splits" not in self.__dict__ and self.classes and self.multilabel_setting is not None:
            return LabelSpace(self.classes, self.multilabel_setting)  # known before any reading
        self._splits  # noqa: B018 - reading the manifests decides the space
        if isinstance(self._label_space, ValueError):
            raise ValueError(str(self._label_space))
        return self._label_space

    @property
    def class_names(self) -> list[str]:
        """Class names in index order (handed to the model by the CLI)."""
        return self.label_space.classes

    @property
    def multilabel(self) -> bool:
        return self.label_space.multilabel

    def dataset(self, split: str, augment: Augment | None = None) -> ManifestDataset:
        """The dataset of one split, with ``augment`` applied to each sample if given.

        Raises:
            ValueError: The split has no manifest.
        """
        if split not in self._splits:
            raise ValueError(f"no data for split '{split}': set data.{split}_manifest")
        samples = self._splits[split]
        labels = (
            None
            if split == "predict" and all(s.label is None for s in samples)
            else self.label_space
        )
        return ManifestDataset(
            samples, labels, self.modality_handlers, self.preprocess, self.strict, augment
        )

    def loader(
        self, split: str, *, shuffle: bool = False, augment: Augment | None = None
    ) -> DataLoader:
        """A DataLoader over one split (the ``*_dataloader`` hooks and evaluation tools use it).

        Args:
            split: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
            shuffle: Shuffle the samples (or the token-budget batches).
            augment: Transforms applied to every sample (the training hook passes the
                configured ``augment``; the others pass none).
        """
        num_classes = len(self.class_names) if self.multilabel else None
        dataset = self.dataset(split, augment)
        common = {
            "num_workers": self.num_workers,
            "collate_fn": Collate(self.modality_handlers, self.preprocess, num_classes),
            "persistent_workers": self.num_workers > 0,
        }
        if self.max_tokens_per_batch is None:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, **common)
        lengths = [
            estimate_length(s, modalities=self.modality_handlers, preprocess=self.preprocess)
            for s in dataset.samples
        ]
        sampler = TokenBudgetBatchSampler(
            lengths, self.max_tokens_per_batch, shuffle=shuffle, seed=self.split_seed
        )
        return DataLoader(dataset, batch_sampler=sampler, **common)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Any:
        """Modality dropout on training batches, on the device they were moved to."""
        trainer = getattr(self, "trainer", None)
        if self.modality_dropout is not None and trainer is not None and trainer.training:
            drop = self.modality_dropout.choose(batch["present"])
            drop_modalities(batch, drop, modalities=self.modality_handlers)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True, augment=self.augment)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict")
