"""The data side of each modality: read from a manifest row, decode, collate, remove.

A :class:`Modality` is everything the data pipeline knows about one kind of input:
which manifest key holds it (:meth:`~Modality.parse`), how one sample's value becomes an
array (:meth:`~Modality.load`), how a batch of those is padded (:meth:`~Modality.collate`),
how modality dropout removes it from some rows (:meth:`~Modality.remove`), which rows carry
it (:meth:`~Modality.present`) and a cheap length estimate for token-budget batching.

Built-ins (``b`` samples, ``k`` images, ``n`` audio samples, ``t`` frames, ``c`` channels,
``s`` the image size)::

    text:  {"text": list[str], "present": (b,) bool}
    image: {"pixels": (b, k, c, s, s) uint8, "mask": (b, k) bool}
    audio: {"waveform": (b, n) float32, "lengths": (b,) long, "sample_rate": int}
    video: {"frames": (b, t, c, s, s) uint8, "mask": (b, t) bool}

A new modality subclasses :class:`Modality` (or :class:`SequenceModality`, which pads
``(n, ...)`` arrays and needs only ``load``) and is reached in three ways: an instance in
the data module's ``modalities`` (``{class_path: my_pkg.SensorModality, init_args: ...}``
in YAML; its settings come from its own constructor); a name registered with
:func:`register_modality`; or a name declared in the entry-point group
``mmctx.data.modalities`` of an installed package (loaded on first use of an unknown name).
See ``docs/extending.md``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from mmctx.data.paths import confined_path, short_repr
from mmctx.data.preprocess import Preprocess
from mmctx.io import check_text, read_audio, read_image, read_text, read_video

log = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUPS",
    "AudioModality",
    "ImageModality",
    "Modality",
    "SequenceModality",
    "TextModality",
    "VideoModality",
    "get_modality",
    "load_entry_points",
    "manifest_paths",
    "modality_names",
    "modality_spec",
    "register_modality",
    "resolve_modalities",
]

ENTRY_POINT_GROUPS = ("mmctx.encoders", "mmctx.data.modalities")
MODALITY_GROUP = "mmctx.data.modalities"


def manifest_paths(
    value: Any, key: str, root: Path, *, data_root: Path | None = None
) -> list[Path]:
    """A manifest value that is a path or a list of paths, resolved against ``root``.

    Every path is confined to ``data_root`` (see :func:`mmctx.data.paths.confined_path`)
    before anything is stat'ed.

    Args:
        value: The manifest value.
        key: Its key, for messages.
        root: Folder that relative paths start from.
        data_root: Folder the paths must stay inside (default ``root``;
            :data:`mmctx.data.paths.UNCONFINED` allows any).

    Raises:
        ValueError: Not a path or a non-empty list of them, a path leaves ``data_root``,
            or a file is missing.
    """
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(p, str) and p for p in items):
        raise ValueError(
            f"'{key}' must be a path or a non-empty list of paths, got {short_repr(value)}"
        )
    paths = [confined_path(p, key, root, data_root) for p in items]
    for p in paths:
        try:
            is_file = p.is_file()
            exists = is_file or p.exists()
        except (OSError, ValueError) as err:  # ENAMETOOLONG, EACCES, ...
            raise ValueError(f"'{key}' cannot be checked: {p} ({err})") from None
        if not is_file:
            what = "is not a regular file" if exists else "file not found"
            raise ValueError(f"'{key}' {what}: {p}")
    return paths


class Modality:
    """The data side of one modality; subclasses set ``name`` and implement the methods.

    Instances must be picklable (they travel to DataLoader workers). Settings a modality
    needs beyond :class:`~mmctx.data.Preprocess` are arguments of its constructor, kept
    as attributes of the same names (JSON values), so that :func:`modality_spec` can
    record the instance in a checkpoint and rebuild it for inference.
    """

    name: ClassVar[str]

    @property
    def keys(self) -> tuple[str, ...]:
        """The manifest keys this modality reads (for messages); default ``(name,)``."""
        return (self.name,)

    def parse(
        self, row: dict[str, Any], root: Path, *, data_root: Path | None = None
    ) -> Any | None:
        """This modality's value in a manifest row, or None when the row has none.

        The default reads ``row[name]`` as a path or list of paths relative to ``root``,
        confined to ``data_root`` (see :func:`manifest_paths`). An override that reads
        paths should accept ``data_root`` and pass it to :func:`manifest_paths`; one that
        does not accept it has its paths confined to ``root`` (the manifest's folder).

        Raises:
            ValueError: The value is malformed, leaves the data root or names a missing file.
        """
        value = row.get(self.name)
        return (
            None if value is None else manifest_paths(value, self.name, root, data_root=data_root)
        )

    def load(self, value: Any, pre: Preprocess) -> Any:
        """Decode and preprocess one sample's value (raise ``DecodeError`` naming the file)."""
        raise NotImplementedError

    def collate(self, values: list[Any], pre: Preprocess) -> dict[str, Any]:
        """Batch loaded values; ``None`` marks a sample without this modality."""
        raise NotImplementedError

    def remove(self, batch: dict[str, Any], rows: Tensor) -> None:
        """Remove the modality from the ``(b,)`` bool ``rows`` of a collated batch, in place."""
        raise NotImplementedError

    def present(self, batch: dict[str, Any]) -> Tensor:
        """``(b,)`` bool: which samples of a collated batch carry this modality."""
        raise NotImplementedError

    def estimate_length(self, value: Any, pre: Preprocess) -> int:
        """Rough fused positions of one sample's value, without decoding (default: 1 a file)."""
        return len(value) if isinstance(value, list) else 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SequenceModality(Modality):
    """A modality whose loaded value is an ``(n, *item_shape)`` array, padded along ``n``.

    Collated as ``{value_key: (b, n, *item_shape), "mask": (b, n) bool}``; subclasses
    implement :meth:`load` and :meth:`item_shape` and may set ``value_key`` and ``dtype``.
    """

    value_key: ClassVar[str] = "values"
    dtype: ClassVar[torch.dtype] = torch.float32

    def item_shape(self, pre: Preprocess) -> tuple[int, ...]:
        """Shape of one element of the sequence (after ``load``)."""
        raise NotImplementedError

    def collate(self, values: list[Any], pre: Preprocess) -> dict[str, Any]:
        shape = self.item_shape(pre)
        n = max([len(v) for v in values if v is not None], default=1)
        data = torch.zeros(len(values), max(n, 1), *shape, dtype=self.dtype)
        mask = torch.zeros(len(values), max(n, 1), dtype=torch.bool)
        for row, v in enumerate(values):
            if v is None:
                continue
            if tuple(v.shape[1:]) != shape:
                raise ValueError(
                    f"{self.name}: a sample's value has shape {tuple(v.shape)}, "
                    f"expected (n, {', '.join(map(str, shape))})"
                )
            data[row, : len(v)] = torch.as_tensor(v)
            mask[row, : len(v)] = True
        return {self.value_key: data, "mask": mask}

    def remove(self, batch: dict[str, Any], rows: Tensor) -> None:
        data = batch[self.value_key]
        rows = rows.to(data.device)
        batch["mask"] = batch["mask"] & ~rows[:, None]
        batch[self.value_key] = data * ~rows.view(-1, *[1] * (data.dim() - 1))

    def present(self, batch: dict[str, Any]) -> Tensor:
        return batch["mask"].any(1)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """``(h, w, c)`` -> ``(c, size, size)``, area-averaged when shrinking."""
    if img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp).reshape(size, size, -1)
    return img.transpose(2, 0, 1)


class TextModality(Modality):
    """Inline ``text`` or a UTF-8 ``text_path`` file; collated as a list of strings."""

    name = "text"
    keys = ("text", "text_path")  # type: ignore[assignment]

    def parse(
        self, row: dict[str, Any], root: Path, *, data_root: Path | None = None
    ) -> str | Path | None:
        if "text" in row and "text_path" in row:
            raise ValueError("give 'text' or 'text_path', not both")
        if "text" in row:
            if not isinstance(row["text"], str):
                raise ValueError(f"'text' must be a string, got {type(row['text']).__name__}")
            return row["text"]
        if "text_path" in row:
            value = row["text_path"]
            if not isinstance(value, str):
                raise ValueError(f"'text_path' must be one path, got {short_repr(value)}")
            return manifest_paths(value, "text_path", root, data_root=data_root)[0]
        return None

    def load(self, value: str | Path, pre: Preprocess) -> str:
        if isinstance(value, Path):
            return read_text(value, limits=pre.limits)
        return check_text(value, source="inline text", limits=pre.limits)

    def collate(self, values: list[Any], pre: Preprocess) -> dict[str, Any]:
        present = torch.tensor([v is not None for v in values], dtype=torch.bool)
        return {"text": [v if v is not None else "" for v in values], "present": present}

    def remove(self, batch: dict[str, Any], rows: Tensor) -> None:
        for row in rows.nonzero().flatten().tolist():
            batch["text"][row] = ""
        batch["present"] = batch["present"] & ~rows.to(batch["present"].device)

    def present(self, batch: dict[str, Any]) -> Tensor:
        return batch["present"]

    def estimate_length(self, value: str | Path, pre: Preprocess) -> int:
        if isinstance(value, Path):
            with contextlib.suppress(OSError):  # reported when the sample is loaded
                return value.stat().st_size // 6  # about 6 bytes a word
            return 0
        return len(value.split())


class ImageModality(SequenceModality):
    """Image files resized to ``image_size``; several images of a sample stack along ``k``.

    Args:
        tokens_per_image: Fused positions per image, for the length estimate.
    """

    name = "image"
    value_key = "pixels"
    dtype = torch.uint8

    def __init__(self, tokens_per_image: int = 16) -> None:
        self.tokens_per_image = tokens_per_image

    def item_shape(self, pre: Preprocess) -> tuple[int, ...]:
        return (pre.image_channels, pre.image_size, pre.image_size)

    def load(self, value: list[Path], pre: Preprocess) -> np.ndarray:
        images = [read_image(p, channels=pre.image_channels, limits=pre.limits) for p in value]
        return np.stack([_square(img, pre.image_size) for img in images])  # (k, c, s, s)

    def estimate_length(self, value: list[Path], pre: Preprocess) -> int:
        return self.tokens_per_image * len(value)


class AudioModality(Modality):
    """Audio files resampled to ``sample_rate``; several files of a sample are joined.

    Args:
        tokens_per_second: Fused positions per second of audio, for the length estimate.
    """

    name = "audio"

    def __init__(self, tokens_per_second: float = 50.0) -> None:
        self.tokens_per_second = tokens_per_second

    def load(self, value: list[Path], pre: Preprocess) -> np.ndarray:
        waves = [read_audio(p, sample_rate=pre.sample_rate, limits=pre.limits) for p in value]
        return np.concatenate(waves)

    def collate(self, values: list[Any], pre: Preprocess) -> dict[str, Any]:
        lengths = torch.tensor([len(v) if v is not None else 0 for v in values], dtype=torch.long)
        waveform = torch.zeros(len(values), max([1, *lengths.tolist()]))
        for row, v in enumerate(values):
            if v is not None:
                waveform[row, : len(v)] = torch.from_numpy(v)
        return {"waveform": waveform, "lengths": lengths, "sample_rate": pre.sample_rate}

    def remove(self, batch: dict[str, Any], rows: Tensor) -> None:
        rows = rows.to(batch["lengths"].device)
        batch["lengths"] = batch["lengths"].masked_fill(rows, 0)
        batch["waveform"] = batch["waveform"] * ~rows[:, None]

    def present(self, batch: dict[str, Any]) -> Tensor:
        return batch["lengths"] > 0

    def estimate_length(self, value: list[Path], pre: Preprocess) -> int:
        n = 0
        for path in value:  # header only; a bad file is reported when the sample is loaded
            with contextlib.suppress(RuntimeError, OSError):
                seconds = min(sf.info(str(path)).duration, pre.limits.max_audio_seconds)
                n += int(seconds * self.tokens_per_second)
        return n


class VideoModality(SequenceModality):
    """Video files sampled at ``video_fps`` (at most ``video_max_frames`` frames a file),
    frames resized to ``image_size``; several videos of a sample are joined along ``t``."""

    name = "video"
    value_key = "frames"
    dtype = torch.uint8

    def item_shape(self, pre: Preprocess) -> tuple[int, ...]:
        return (pre.image_channels, pre.image_size, pre.image_size)

    def load(self, value: list[Path], pre: Preprocess) -> np.ndarray:
        clips = []
        for path in value:
            frames = read_video(
                path,
                fps=pre.video_fps,
                max_frames=pre.video_max_frames,
                channels=pre.image_channels,
                limits=pre.limits,
            )  # (t, h, w, c)
            clips.append(np.stack([_square(f, pre.image_size) for f in frames]))  # (t, c, s, s)
        return np.concatenate(clips)

    def estimate_length(self, value: list[Path], pre: Preprocess) -> int:
        return pre.video_max_frames * len(value)  # one position a frame, at most


# ----------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Modality] = {
    m.name: m for m in (TextModality(), ImageModality(), AudioModality(), VideoModality())
}
BUILTIN = tuple(_REGISTRY)
_BUILTIN_CLASSES = tuple(type(m) for m in _REGISTRY.values())
_scanned = False  # entry points of MODALITY_GROUP looked at in this process


def _check_modality(obj: Any) -> Modality:
    if not isinstance(obj, Modality):
        raise TypeError(f"a modality is a name or a mmctx.data.modalities.Modality, got {obj!r}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(
            f"{type(obj).__name__} must set the class attribute `name` to an identifier "
            f"(e.g. 'sensor'), got {name!r}"
        )
    return obj


def register_modality(
    modality: Modality | type[Modality], *, replace: bool = False
) -> Modality | type[Modality]:
    """Make a modality known by its ``name`` (usable as a class decorator).

    Args:
        modality: An instance, or a class built with its default arguments.
        replace: Replace a different modality already registered under that name.

    Returns:
        ``modality`` unchanged.

    Raises:
        TypeError: Not a :class:`Modality`.
        ValueError: The name is taken by a modality of another class.
    """
    instance = modality() if isinstance(modality, type) else modality
    _check_modality(instance)
    old = _REGISTRY.get(instance.name)
    if old is not None and type(old) is not type(instance) and not replace:
        raise ValueError(
            f"modality name {instance.name!r} is already registered by {type(old).__name__}; "
            "pass replace=True to replace it"
        )
    _REGISTRY[instance.name] = instance
    return modality


def load_entry_points(group: str) -> dict[str, Any]:
    """Import every entry point of ``group`` (e.g. ``"mmctx.encoders"``) of installed packages.

    Importing an encoder class is what gives it a short ``class_path`` in configs. Modality
    entry points (group ``mmctx.data.modalities``) are also registered under their ``name``. A
    plugin that fails to import is logged with the cause and skipped.

    Returns:
        ``{entry point name: loaded object}``.
    """
    global _scanned
    loaded: dict[str, Any] = {}
    _scanned = _scanned or group == MODALITY_GROUP
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not stop the others
            log.warning("skipped plugin %r (%s = %s): %s", group, ep.name, ep.value, err)
            continue
        loaded[ep.name] = obj
        if group == MODALITY_GROUP:
            _register_entry_point(ep.name, ep.value, obj)
    return loaded


def _register_entry_point(ep_name: str, ep_value: str, obj: Any) -> None:
    cls = obj if isinstance(obj, type) else type(obj)
    if not issubclass(cls, Modality):
        log.warning(
            "skipped plugin %s = %s: not a mmctx.data.modalities.Modality", ep_name, ep_value
        )
        return
    old = _REGISTRY.get(getattr(obj, "name", None))
    if old is None:
        try:
            register_modality(obj)
        except (TypeError, ValueError) as err:
            log.warning("skipped plugin %s = %s: %s", ep_name, ep_value, err)
    elif type(old) is not cls:
        log.warning(
            "skipped plugin %s = %s: modality name %r is taken by %s",
            ep_name,
            ep_value,
            obj.name,
            type(old).__name__,
        )


def _scan_once() -> None:
    if not _scanned:
        load_entry_points(MODALITY_GROUP)


def modality_names() -> tuple[str, ...]:
    """Names of the registered modalities, built-ins first (entry points loaded once)."""
    _scan_once()
    return tuple(_REGISTRY)


def get_modality(name: str) -> Modality:
    """The registered modality called ``name`` (entry points are loaded on a miss).

    Raises:
        ValueError: Unknown name; the message lists close matches and the known names.
    """
    if name not in _REGISTRY:
        _scan_once()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"did you mean {close}? " if close else ""
    raise ValueError(
        f"modality {name!r} is not known; {hint}known: {list(_REGISTRY)} (register one with "
        "mmctx.data.modalities.register_modality, the entry-point group 'mmctx.data.modalities', or "
        "give it as {class_path: my_pkg.MyModality})"
    )


def modality_spec(modality: Modality) -> str | dict[str, Any]:
    """How to record a modality (in a checkpoint): a built-in's name, or a plugin's
    ``{"class_path": ..., "init_args": ...}`` (its constructor arguments, read back from
    the attributes of the same names); :func:`resolve_modalities` takes either back."""
    if type(modality) in _BUILTIN_CLASSES:
        return modality.name
    cls = type(modality)
    params = inspect.signature(cls).parameters
    init_args = {n: getattr(modality, n) for n in params if hasattr(modality, n)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _from_spec(spec: dict[str, Any]) -> Modality:
    class_path = spec.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"a modality spec needs a dotted 'class_path', got {spec!r}")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"modality class_path {class_path!r} cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Modality)):
        raise TypeError(
            f"modality class_path {class_path!r} is not a mmctx.data.modalities.Modality"
        )
    return cls(**dict(spec.get("init_args") or {}))


def resolve_modalities(specs: Sequence[str | Modality | dict[str, Any]]) -> tuple[Modality, ...]:
    """Names, instances and :func:`modality_spec` dicts -> instances (built-ins in the order
    text, image, audio, video, then the others in the given order).

    Raises:
        ValueError: An unknown name, a class that cannot be imported, or a name given twice.
        TypeError: An entry that is none of those.
    """
    out: list[Modality] = []
    for spec in specs:
        if isinstance(spec, str):
            out.append(get_modality(spec))
        elif isinstance(spec, dict):
            out.append(_check_modality(_from_spec(spec)))
        else:
            out.append(_check_modality(spec))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"modalities name one modality twice: {names}")
    order = {name: i for i, name in enumerate(BUILTIN)}
    return tuple(sorted(out, key=lambda m: order.get(m.name, len(order))))
