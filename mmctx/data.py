"""Samples to tensors: decode a manifest row, preprocess each modality, collate a batch.

The collated batch is a dict::

    {"ids": list[str], "lines": list[int],
     "inputs": {"text":  {"text": list[str], "present": (b,) bool},
                "image": {"pixels": (b, k, c, h, w) uint8, "mask": (b, k) bool},
                "audio": {"waveform": (b, s) float32, "lengths": (b,) long, "sample_rate": int}},
     "present": {modality: (b,) bool},
     "label": (b,) long  |  (b, classes) float for multi-label  (absent when unlabelled),
     "errors": list[str]}   # samples of this batch that failed to decode, with the cause

Several images of one sample are stacked along ``k``; several audio files are joined
end to end. A sample that fails to decode is left out of its batch and its error is
carried in ``errors`` (or raised, in strict mode), so the run can count and report it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmctx.io import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    check_text,
    read_audio,
    read_image,
    read_text,
)
from mmctx.manifest import LabelSpace, Sample
from mmctx.transforms import Augment

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "audio")


@dataclass(frozen=True)
class Preprocess:
    """How decoded media become fixed-format arrays.

    Attributes:
        image_size: Images are resized to this square size.
        image_channels: 1 (grayscale) or 3 (RGB).
        sample_rate: Audio is resampled to this rate.
        limits: Decode limits (pixels, seconds, characters).
    """

    image_size: int = 32
    image_channels: int = 3
    sample_rate: int = 16000
    limits: Limits = DEFAULT_LIMITS


class SampleError(Exception):
    """A sample that failed to load; carries the message for the batch's ``errors``."""


class ManifestDataset(Dataset):
    """Decodes manifest samples on access.

    Args:
        samples: Parsed rows.
        labels: Label space; ``None`` for unlabelled (prediction) data.
        modalities: Modalities to load; others in the rows are ignored.
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
        modalities: tuple[str, ...],
        preprocess: Preprocess,
        strict: bool = False,
        augment: Augment | None = None,
    ) -> None:
        self.samples = samples
        self.labels = labels
        self.modalities = modalities
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
        lim = self.pre.limits
        if "text" in self.modalities:
            if sample.text is not None:
                out["text"] = check_text(sample.text, source=f"line {sample.line}", limits=lim)
            elif sample.text_path is not None:
                out["text"] = read_text(sample.text_path, limits=lim)
        if "image" in self.modalities and "image" in sample.media:
            out["image"] = np.stack([self._image(p) for p in sample.media["image"]])
        if "audio" in self.modalities and "audio" in sample.media:
            waves = [
                read_audio(p, sample_rate=self.pre.sample_rate, limits=lim)
                for p in sample.media["audio"]
            ]
            out["audio"] = np.concatenate(waves)
        return out

    def _image(self, path: Any) -> np.ndarray:
        img = read_image(path, channels=self.pre.image_channels, limits=self.pre.limits)
        size = self.pre.image_size
        if img.shape[:2] != (size, size):
            interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
            img = cv2.resize(img, (size, size), interpolation=interp).reshape(size, size, -1)
        return img.transpose(2, 0, 1)  # (c, h, w)


def estimate_length(
    sample: Sample,
    tokens_per_audio_second: float,
    tokens_per_image: int,
    max_audio_seconds: float = float("inf"),
) -> int:
    """Cheap estimate of a sample's fused length, from headers and file sizes only (audio
    counts up to ``max_audio_seconds``, the most that is read)."""
    n = 1
    if sample.text is not None:
        n += len(sample.text.split())
    elif sample.text_path is not None:
        n += sample.text_path.stat().st_size // 6  # about 6 bytes a word
    n += tokens_per_image * len(sample.media.get("image", []))
    for path in sample.media.get("audio", []):
        with contextlib.suppress(RuntimeError, OSError):  # reported when the sample is loaded
            seconds = min(sf.info(str(path)).duration, max_audio_seconds)
            n += int(seconds * tokens_per_audio_second)
    return n


def _collate_text(items: list[dict[str, Any]], pre: Preprocess) -> dict[str, Any]:
    present = torch.tensor(["text" in it for it in items])
    return {"text": [it.get("text", "") for it in items], "present": present}


def _collate_image(items: list[dict[str, Any]], pre: Preprocess) -> dict[str, Any]:
    k = max([len(it["image"]) for it in items if "image" in it], default=1)
    c, s = pre.image_channels, pre.image_size
    pixels = torch.zeros(len(items), k, c, s, s, dtype=torch.uint8)
    mask = torch.zeros(len(items), k, dtype=torch.bool)
    for row, it in enumerate(items):
        if "image" in it:
            n = len(it["image"])
            pixels[row, :n] = torch.from_numpy(it["image"])
            mask[row, :n] = True
    return {"pixels": pixels, "mask": mask}


def _collate_audio(items: list[dict[str, Any]], pre: Preprocess) -> dict[str, Any]:
    lengths = torch.tensor([len(it["audio"]) if "audio" in it else 0 for it in items])
    waveform = torch.zeros(len(items), max(1, int(lengths.max())))
    for row, it in enumerate(items):
        if "audio" in it:
            waveform[row, : len(it["audio"])] = torch.from_numpy(it["audio"])
    return {"waveform": waveform, "lengths": lengths, "sample_rate": pre.sample_rate}


_COLLATE = {"text": _collate_text, "image": _collate_image, "audio": _collate_audio}


def _remove_text(batch: dict[str, Any], rows: Tensor) -> None:
    for row in rows.nonzero().flatten().tolist():
        batch["text"][row] = ""
    batch["present"] = batch["present"] & ~rows.to(batch["present"].device)


def _remove_image(batch: dict[str, Any], rows: Tensor) -> None:
    rows = rows.to(batch["mask"].device)
    batch["mask"] = batch["mask"] & ~rows[:, None]
    batch["pixels"] = batch["pixels"] * ~rows[:, None, None, None, None]


def _remove_audio(batch: dict[str, Any], rows: Tensor) -> None:
    rows = rows.to(batch["lengths"].device)
    batch["lengths"] = batch["lengths"].masked_fill(rows, 0)
    batch["waveform"] = batch["waveform"] * ~rows[:, None]


_REMOVE = {"text": _remove_text, "image": _remove_image, "audio": _remove_audio}


def drop_modalities(batch: dict[str, Any], drop: dict[str, Tensor]) -> dict[str, Any]:
    """Remove modalities from some samples of a collated batch, in place, as if never there.

    Args:
        batch: A batch from :class:`Collate` (on any device).
        drop: ``{modality: (b,) bool}``, True where that sample loses that modality.

    Returns:
        The same batch, with inputs and ``present`` flags updated.
    """
    for m, rows in drop.items():
        if m in batch["inputs"] and rows.any():
            _REMOVE[m](batch["inputs"][m], rows)
            batch["present"][m] = _present(m, batch["inputs"][m])
    return batch


def _present(modality: str, batch: dict[str, Any]) -> Tensor:
    if modality == "text":
        return batch["present"]
    if modality == "image":
        return batch["mask"].any(1)
    return batch["lengths"] > 0


class Collate:
    """Batch loaded samples (picklable, so it works with worker processes).

    Args:
        modalities: Modalities to put in the batch (absent ones get masked entries).
        preprocess: The same settings the dataset used.
        num_classes: Width of multi-hot labels; ``None`` for single-label data.
    """

    def __init__(
        self, modalities: tuple[str, ...], preprocess: Preprocess, num_classes: int | None
    ) -> None:
        self.modalities = modalities
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
        for m in self.modalities:
            batch["inputs"][m] = _COLLATE[m](inputs, self.pre)
            batch["present"][m] = _present(m, batch["inputs"][m])
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
