"""JSON Lines manifests: one sample a line, any modality may be absent.

A row: ``{"id": str, "text": str | "text_path": path, "image": path | [paths],
"audio": path | [paths], "video": path | [paths], "label": name | index | [names or
indices]}``, plus a key per plugin modality (see :mod:`mmctx.data.modalities`). Paths are
relative to the manifest's folder. A bad row is reported with its line number and cause
and skipped (or raised, in strict mode); nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmctx.data.modalities import Modality, manifest_paths, modality_names, resolve_modalities

log = logging.getLogger(__name__)

MEDIA_KEYS = ("image", "audio", "video")  # the built-in modalities read as paths
LABEL_KEY = "label"


class ManifestError(ValueError):
    """A manifest row that cannot be used; ``str()`` names the file, the line and the cause."""


@dataclass
class Sample:
    """One parsed manifest row, with paths already resolved.

    ``media`` holds every modality but text by name: a list of paths for the built-ins,
    whatever :meth:`~mmctx.data.modalities.Modality.parse` returns for a plugin.
    """

    line: int
    id: str
    text: str | None = None
    text_path: Path | None = None
    media: dict[str, Any] = field(default_factory=dict)
    label: Any = None

    @property
    def modalities(self) -> list[str]:
        found = list(self.media)
        if self.text is not None or self.text_path is not None:
            found.append("text")
        return sorted(found)

    def get(self, modality: str) -> Any | None:
        """The parsed value of one modality (text: the string or its path), or None."""
        if modality == "text":
            return self.text if self.text is not None else self.text_path
        return self.media.get(modality)


def iter_lines(path: Path) -> Iterator[tuple[int, str | ManifestError]]:
    """Yield ``(line_number, text)`` for each non-blank line, or an error for bad UTF-8.

    Lines are split on ``\\n`` only: U+2028 and friends are legal inside JSON strings.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, ManifestError(f"{path}:{number}: invalid UTF-8 at byte {err.start}")
                continue
            if text.strip():
                yield number, text


def iter_rows(path: Path) -> Iterator[tuple[int, Any | ManifestError]]:
    """Yield ``(line_number, decoded JSON value)`` for each non-blank line, or a
    :class:`ManifestError` (``"<path>:<line>: <cause>"``) for bad UTF-8 or bad JSON."""
    for line, text in iter_lines(path):
        if isinstance(text, ManifestError):
            yield line, text
            continue
        try:
            yield line, json.loads(text)
        except json.JSONDecodeError as err:
            yield line, ManifestError(f"{path}:{line}: not valid JSON ({err.msg})")


def count_rows(path: Path) -> int:
    """Non-blank lines of a manifest (one quick pass, for progress bars)."""
    with open(path, "rb") as fh:
        return sum(1 for raw in fh if raw.strip())


_paths = manifest_paths  # the old private name


def known_modalities(
    extra: Sequence[str | Modality | dict[str, Any]] | None = None,
) -> tuple[Modality, ...]:
    """Every registered modality, with ``extra`` ones (instances win over same names)."""
    given = {m.name: m for m in resolve_modalities(extra or ())}
    registered = [n for n in modality_names() if n not in given]
    return resolve_modalities([*registered, *given.values()])


def parse_row(
    row: Any, line: int, root: Path, *, modalities: Sequence[str | Modality] | None = None
) -> Sample:
    """Turn one decoded JSON value into a :class:`Sample` (raises ValueError with the cause).

    Args:
        row: The decoded JSON value.
        line: Its line number.
        root: Folder that relative paths start from.
        modalities: Plugin modalities to read besides the registered ones (instances,
            names or :func:`~mmctx.data.modalities.modality_spec` dicts); see
            :func:`known_modalities`.
    """
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    sample = Sample(line=line, id=str(row.get("id", f"line-{line}")), label=row.get(LABEL_KEY))
    handlers = known_modalities(modalities)
    for m in handlers:
        value = m.parse(row, root)
        if value is None:
            continue
        if m.name == "text":
            sample.text, sample.text_path = (
                (None, value) if isinstance(value, Path) else (value, None)
            )
        else:
            sample.media[m.name] = value
    if not sample.modalities:
        keys = [k for m in handlers for k in m.keys]
        raise ValueError(f"the row has no modality ({', '.join(keys[:-1])} or {keys[-1]})")
    return sample


def read_manifest(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    modalities: Sequence[str | Modality] | None = None,
) -> tuple[list[Sample], list[str]]:
    """Parse a manifest.

    Args:
        path: The JSON Lines file.
        strict: Raise :class:`ManifestError` at the first bad row instead of skipping it.
        modalities: Plugin modalities to read besides the registered ones (instances, or
            names); every registered modality is read in any case.

    Returns:
        ``(samples, problems)``: the good rows and one message per skipped row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    handlers = known_modalities(modalities)
    samples: list[Sample] = []
    problems: list[str] = []
    for line, row in iter_rows(path):
        try:
            if isinstance(row, ManifestError):
                raise row
            try:
                samples.append(parse_row(row, line, path.parent, modalities=handlers))
            except ValueError as err:
                raise ManifestError(f"{path}:{line}: {err}") from None
        except ManifestError as err:
            if strict:
                raise
            problems.append(str(err))
            log.warning("skipped %s", err)
    if problems:
        log.warning("%s: skipped %d of %d rows", path, len(problems), len(problems) + len(samples))
    return samples, problems


class LabelSpace:
    """Class names and the mapping from manifest labels to indices.

    Labels may be class names (strings) or indices into ``classes``; a list of them makes a
    multi-label row. When ``classes`` is not given it is inferred from the labels seen:
    sorted names, or ``"0" .. str(max)`` when every label is an integer.
    """

    def __init__(self, classes: Sequence[str], multilabel: bool = False) -> None:
        if not classes:
            raise ValueError("classes is empty")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has duplicates: {list(classes)}")
        self.classes = [str(c) for c in classes]
        self.multilabel = multilabel
        self._index = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def infer(cls, labels: Iterable[Any], classes: Sequence[str] | None = None) -> LabelSpace:
        labels = [lab for lab in labels if lab is not None]
        multilabel = any(isinstance(lab, list) for lab in labels)
        if classes:
            return cls(classes, multilabel)
        flat = [x for lab in labels for x in (lab if isinstance(lab, list) else [lab])]
        if not flat:
            raise ValueError("no labels found in the manifests; give `classes` explicitly")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
            return cls([str(i) for i in range(max(flat) + 1)], multilabel)
        if any(not isinstance(x, str) for x in flat):
            raise ValueError("labels mix class names and indices; give `classes` explicitly")
        return cls(sorted(set(flat)), multilabel)

    def index(self, label: Any) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < len(self.classes):
                return label
            raise ValueError(f"label index {label} is outside 0..{len(self.classes) - 1}")
        if isinstance(label, str) and label in self._index:
            return self._index[label]
        raise ValueError(f"unknown label {label!r}; known classes: {self.classes}")

    def encode(self, label: Any) -> int | list[int]:
        """Class index (multi-class) or list of indices (multi-label)."""
        if label is None:
            raise ValueError("the row has no 'label'")
        if self.multilabel:
            return sorted({self.index(x) for x in (label if isinstance(label, list) else [label])})
        if isinstance(label, list):
            raise ValueError(f"a list label {label!r} needs a multi-label dataset")
        return self.index(label)
