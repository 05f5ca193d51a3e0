"""Samples to tensors: decode a manifest row, preprocess each modality, collate a batch.

The collated batch is a dict::

    {"ids": list[str], "lines": list[int],
     "inputs": {"text":  {"text": list[str], "present": (b,) bool},
                "image": {"pixels": (b, k, c, h, w) uint8, "mask": (b, k) bool},
                "audio": {"waveform": (b, s) float32, "lengths": (b,) long, "sample_rate": int},
                "video": {"frames": (b, t, c, h, w) uint8, "mask": (b, t) bool},
                <plugin>: whatever its Modality.collate returns},
     "present": {modality: (b,) bool},
     "label": (b,) long  |  (b, classes) float for multi-label  (absent when unlabelled),
     "errors": list[str]}   # samples of this batch that failed to decode, with the cause

Several images of one sample are stacked along ``k``; several audio files are joined
end to end; several videos are joined along ``t``. A sample that fails to decode is left
out of its batch and its error is carried in ``errors`` (or raised, in strict mode), so
the run can count and report it. What each modality does is its
:class:`~mmctx.data.modalities.Modality` (built-ins and plugins alike), so ``modalities``
arguments take names or instances.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmctx.data.manifest import LabelSpace, Sample
from mmctx.data.modalities import (
    BUILTIN,
    AudioModality,
    ImageModality,
    Modality,
    get_modality,
    resolve_modalities,
)
from mmctx.data.preprocess import Preprocess, SampleError
from mmctx.io import DecodeError, Limits
from mmctx.transforms import Augment

log = logging.getLogger(__name__)

MODALITIES = BUILTIN  # the built-in modalities: text, image, audio, video


class ManifestDataset(Dataset):
    """Decodes manifest samples on access.

    Args:
        samples: Parsed rows.
        labels: Label space; ``None`` for unlabelled (prediction) data.
        modalities: Modalities to load (names or :class:`~mmctx.data.modalities.Modality`
            instances); others in the rows are ignored.
        preprocess: Decode and resize settings.
        strict: Raise on a sample that fails to decode instead of reporting it.
        augment: Random transforms applied to each decoded sample (training data only).
            Their randomness is drawn from torch's global generator, which
            ``seed_everything`` and the DataLoader's per-worker seeding make reproducible.
    """

    def __init__(
        self,
        samples: list[Sample],
        labels: LabelSpace | None,
        modalities: Sequence[str | Modality],
        preprocess: Preprocess,
        strict: bool = False,
        augment: Augment | None = None,
    ) -> None:
        self.samples = samples
        self.labels = labels
        self.handlers = resolve_modalities(modalities)
        self.modalities = tuple(m.name for m in self.handlers)
        self.pre = preprocess
        self.strict = strict
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | SampleError:
        sample = self.samples[index]
        try:
            inputs = self._load(sample)
            if self.augment is not None:
                rng = np.random.default_rng(int(torch.randint(2**62, ())))
                inputs = self.augment(inputs, rng)
            item = {"id": sample.id, "line": sample.line, "inputs": inputs}
            if self.labels is not None:
                item["label"] = self.labels.encode(sample.label)
            return item
        except (DecodeError, ValueError) as err:
            message = f"sample {sample.id!r} (line {sample.line}): {err}"
            if self.strict:
                raise SampleError(message) from err
            log.warning("skipped %s", message)
            return SampleError(message)

    def _load(self, sample: Sample) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.handlers:
            value = sample.get(m.name)
            if value is not None:
                out[m.name] = m.load(value, self.pre)
        return out


def estimate_length(
    sample: Sample,
    tokens_per_audio_second: float = 50.0,
    tokens_per_image: int = 16,
    max_audio_seconds: float = float("inf"),
    *,
    modalities: Sequence[str | Modality] | None = None,
    preprocess: Preprocess | None = None,
) -> int:
    """Cheap estimate of a sample's fused length, from headers and file sizes only.

    Args:
        sample: A parsed row.
        tokens_per_audio_second: Positions per second of audio (for ``"audio"`` by name).
        tokens_per_image: Positions per image (for ``"image"`` by name).
        max_audio_seconds: Audio counts up to this, the most that is read (used when no
            ``preprocess`` is given).
        modalities: Modalities counted, names or instances (default: the sample's own).
        preprocess: Settings the estimates read (video frames, audio limit).
    """
    pre = preprocess or Preprocess(limits=Limits(max_audio_seconds=max_audio_seconds))
    rates: dict[str, Modality] = {
        "image": ImageModality(tokens_per_image),
        "audio": AudioModality(tokens_per_audio_second),
    }
    specs = sample.modalities if modalities is None else modalities
    n = 1
    for m in resolve_modalities([rates.get(s, s) if isinstance(s, str) else s for s in specs]):
        value = sample.get(m.name)
        if value is not None:
            n += m.estimate_length(value, pre)
    return n


def drop_modalities(
    batch: dict[str, Any],
    drop: dict[str, Tensor],
    *,
    modalities: Sequence[str | Modality] | None = None,
) -> dict[str, Any]:
    """Remove modalities from some samples of a collated batch, in place, as if never there.

    Args:
        batch: A batch from :class:`Collate` (on any device).
        drop: ``{modality: (b,) bool}``, True where that sample loses that modality.
        modalities: The batch's modalities, for plugins not registered by name (the data
            module passes its own); other names are looked up with
            :func:`~mmctx.data.modalities.get_modality`.

    Returns:
        The same batch, with inputs and ``present`` flags updated.
    """
    given = {m.name: m for m in resolve_modalities(modalities or ())}
    for name, rows in drop.items():
        if name in batch["inputs"] and rows.any():
            m = given.get(name) or get_modality(name)
            m.remove(batch["inputs"][name], rows)
            batch["present"][name] = m.present(batch["inputs"][name])
    return batch


class Collate:
    """Batch loaded samples (picklable, so it works with worker processes).

    Args:
        modalities: Modalities to put in the batch, names or
            :class:`~mmctx.data.modalities.Modality` instances (absent ones get masked entries).
        preprocess: The same settings the dataset used.
        num_classes: Width of multi-hot labels; ``None`` for single-label data.
    """

    def __init__(
        self,
        modalities: Sequence[str | Modality],
        preprocess: Preprocess,
        num_classes: int | None,
    ) -> None:
        self.handlers = resolve_modalities(modalities)
        self.modalities = tuple(m.name for m in self.handlers)
        self.pre = preprocess
        self.num_classes = num_classes

    def __call__(self, loaded: list[dict[str, Any] | SampleError]) -> dict[str, Any]:
        items = [it for it in loaded if not isinstance(it, SampleError)]
        batch: dict[str, Any] = {
            "ids": [it["id"] for it in items],
            "lines": [it["line"] for it in items],
            "errors": [str(it) for it in loaded if isinstance(it, SampleError)],
            "inputs": {},
            "present": {},
        }
        inputs = [it["inputs"] for it in items]
        for m in self.handlers:
            batch["inputs"][m.name] = m.collate([it.get(m.name) for it in inputs], self.pre)
            batch["present"][m.name] = m.present(batch["inputs"][m.name])
        if items and "label" in items[0]:
            batch["label"] = self._labels([it["label"] for it in items])
        return batch

    def _labels(self, labels: list[Any]) -> Tensor:
        if self.num_classes is None:
            return torch.tensor(labels, dtype=torch.long)
        target = torch.zeros(len(labels), self.num_classes)
        for row, idx in enumerate(labels):
            target[row, idx] = 1.0
        return target
