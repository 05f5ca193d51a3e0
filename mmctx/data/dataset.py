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
end to end; several videos are joined along ``t``. A sample that fails to load, for any
reason (a bad file, non-finite values, a plugin or transform that raises, a label outside
the label space), is left out of its batch and its error is carried in ``errors`` (or
raised, in strict mode), so the run can count and report it. What each modality does is its
:class:`~mmctx.data.modalities.Modality` (built-ins and plugins alike), so ``modalities``
arguments take names or instances.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
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
from mmctx.errors import one_line
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
        strict: Raise :class:`SampleError` on a sample that fails to load instead of
            returning it (the original exception is its ``__cause__``).
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
        """The loaded sample, or a :class:`SampleError` saying why it could not be loaded.

        Whatever goes wrong with one sample is that sample's error: any ``Exception``,
        ``MemoryError`` and ``RecursionError`` included (a file too big to decode or a
        plugin that recurses fails alone; memory held by the failed sample is freed as the
        exception unwinds). ``KeyboardInterrupt`` and ``SystemExit`` are not exceptions of
        a sample and pass through.
        """
        return self.load_sample(self.samples[index])

    def load_sample(self, sample: Sample) -> dict[str, Any] | SampleError:
        """One sample loaded, augmented and labelled, or its :class:`SampleError` (see
        ``__getitem__``); streamed shards reuse it for samples that are not in ``samples``."""
        where = "loading"  # the stage, for exceptions that name no file
        try:
            inputs = self._load(sample)
            if self.augment is not None:
                where = "augmentation"
                rng = np.random.default_rng(int(torch.randint(2**62, ())))
                inputs = self.augment(inputs, rng)
                _check_inputs(inputs, sample, after="after augmentation")
            item = {"id": sample.id, "line": sample.line, "inputs": inputs}
            if self.labels is not None:
                where = "label"
                item["label"] = self.labels.encode(sample.label)
            return item
        except Exception as err:  # noqa: BLE001 - one sample's failure, whatever it is
            named = isinstance(err, DecodeError | _LoadError)  # these name the file already
            cause = str(err) if named else f"{where}: {_describe(err)}"
            message = f"sample {sample.id!r} (line {sample.line}): {cause}"
            if self.strict:
                raise SampleError(message) from err
            log.warning("skipped %s", one_line(message))
            return SampleError(message)

    def _load(self, sample: Sample) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.handlers:
            value = sample.get(m.name)
            if value is None:
                continue
            try:
                out[m.name] = m.load(value, self.pre)
            except DecodeError:
                raise
            except Exception as err:  # noqa: BLE001 - named with the files, then re-raised
                raise _LoadError(f"{_files(value)}: {m.name}: {_describe(err)}") from err
        _check_inputs(out, sample)
        return out


class _LoadError(Exception):
    """A modality's loader raised something other than DecodeError (message ready)."""


def _describe(err: BaseException) -> str:
    """``err`` as a cause: its message, with the exception's type unless a ValueError."""
    text = str(err)
    if isinstance(err, MemoryError):
        return f"out of memory while loading it (MemoryError{': ' + text if text else ''})"
    if type(err) is ValueError and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _files(value: Any) -> str:
    """The file(s) a modality's parsed value names, or a short repr of the value."""
    items = value if isinstance(value, list | tuple) else [value]
    paths = [os.fspath(v) for v in items if isinstance(v, str | os.PathLike)]
    if paths and len(paths) == len(items):
        return ", ".join(paths)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _leaves(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(key path, leaf)`` for every array, tensor and str inside nested dicts and lists."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{key}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{key}[{i}]")
    elif isinstance(value, np.ndarray | Tensor | str | float):
        yield key, value


def _check_inputs(inputs: dict[str, Any], sample: Sample, after: str = "") -> None:
    """Raise _LoadError if any loaded value is non-finite or text not encodable as UTF-8.

    The built-in readers check this already; this catches plugin modalities and
    augmentations, so that non-finite data never reaches a model.
    """
    for name, value in inputs.items():
        for key, leaf in _leaves(value, name):
            problem = _leaf_problem(leaf)
            if problem:
                files = _files(sample.get(name))
                where = f" {after}" if after else ""
                raise _LoadError(f"{files}: {key} {problem}{where}")


def _leaf_problem(leaf: Any) -> str | None:
    if isinstance(leaf, str):
        try:
            leaf.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"is not valid Unicode (a lone surrogate at character {err.start})"
        return None
    if isinstance(leaf, Tensor):
        if not leaf.is_floating_point() and not leaf.is_complex():
            return None
        bad = leaf.numel() - int(torch.isfinite(leaf).sum())
    elif isinstance(leaf, np.ndarray):
        if not np.issubdtype(leaf.dtype, np.inexact):
            return None
        bad = leaf.size - int(np.count_nonzero(np.isfinite(leaf)))
    else:
        bad = 0 if np.isfinite(leaf) else 1
    return f"holds {bad:,} non-finite values (NaN/inf)" if bad else None


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
