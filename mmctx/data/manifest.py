"""JSON Lines manifests: one sample a line, any modality may be absent.

A row: ``{"id": str, "text": str | "text_path": path, "image": path | [paths],
"audio": path | [paths], "video": path | [paths], "label": name | index | [names or
indices]}``, plus a key per plugin modality (see :mod:`mmctx.data.modalities`). Paths are
relative to the manifest's folder. A bad row is reported with its line number and cause
and skipped (or raised, in strict mode); nothing is dropped silently.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmctx.data.modalities import Modality, modality_names, resolve_modalities
from mmctx.data.paths import short_repr
from mmctx.errors import one_line

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
    source: Path | None = None  # the manifest the row came from, for messages

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


_BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 16 * 2**20  # a longer line is that row's error (read in bounded chunks)
_ARRAY_HINT = (
    "the file is a JSON array, not JSON Lines: a manifest holds one JSON object per line "
    "(convert it with `jq -c '.[]' file.json > file.jsonl`)"
)


def iter_lines(
    path: Path, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str | ManifestError]]:
    """Yield ``(line_number, text)`` for each non-blank line, or an error for bad UTF-8
    or a line longer than ``max_line_bytes`` (its bytes are skipped, not kept).

    Lines are split on ``\\n`` only: U+2028 and friends are legal inside JSON strings. A
    UTF-8 byte order mark at the start of the file is dropped.
    """
    with open(path, "rb") as fh:
        number = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = fh.readline(2**20)
                    size += len(raw)
                yield (
                    number,
                    ManifestError(
                        f"{path}:{number}: line of {size} bytes is longer than {max_line_bytes}"
                    ),
                )
                continue
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw.strip():  # blank: JSON whitespace (and the other ASCII spaces) only
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, ManifestError(f"{path}:{number}: invalid UTF-8 at byte {err.start}")
                continue
            yield number, text


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        twice = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        raise ValueError(f"duplicate key {', '.join(map(repr, twice))} in one object")
    return row


def decode_row(text: str) -> Any:
    """One line of JSON -> its value; a ValueError names the cause.

    Duplicate keys in an object are an error (Python would keep the last one silently), and
    so is nesting deeper than the interpreter can follow.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ValueError("not usable JSON (nested too deeply)") from None
    except ValueError as err:  # duplicate keys, integers over Python's digit limit
        raise ValueError(f"not usable JSON ({err})") from None


def iter_rows(
    path: Path, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, Any | ManifestError]]:
    """Yield ``(line_number, decoded JSON value)`` for each non-blank line, or a
    :class:`ManifestError` (``"<path>:<line>: <cause>"``) for a line that cannot be decoded.

    Never raises for the content of a line. A file whose first line opens a JSON array
    over several lines (``[`` alone, or ``[{...},``) is not JSON Lines: then every line is
    an error saying so, rather than the lines that happen to parse being used.
    """
    as_array = None
    for line, text in iter_lines(path, max_line_bytes=max_line_bytes):
        if isinstance(text, ManifestError):
            yield line, text
            continue
        if as_array is None:
            first = text.strip()
            as_array = first == "[" or (first.startswith("[") and first.endswith(","))
        if as_array:
            yield line, ManifestError(f"{path}:{line}: {_ARRAY_HINT}")
            continue
        try:
            yield line, decode_row(text)
        except Exception as err:  # noqa: BLE001 - one line never ends the run
            yield line, ManifestError(f"{path}:{line}: {err}")


def count_rows(path: Path) -> int:
    """Non-blank lines of a manifest (one quick pass, for progress bars)."""
    with open(path, "rb") as fh:
        return sum(
            1
            for n, raw in enumerate(fh)
            if (raw[len(_BOM) :] if n == 0 and raw.startswith(_BOM) else raw).strip()
        )


def known_modalities(
    extra: Sequence[str | Modality | dict[str, Any]] | None = None,
) -> tuple[Modality, ...]:
    """Every registered modality, with ``extra`` ones (instances win over same names)."""
    given = {m.name: m for m in resolve_modalities(extra or ())}
    registered = [n for n in modality_names() if n not in given]
    return resolve_modalities([*registered, *given.values()])


def row_id(row: dict[str, Any], line: int) -> str:
    """The sample id of a row: its ``id`` (a string, or an integer written in decimal), or
    ``"line-<n>"`` when it has none.

    Raises:
        ValueError: ``id`` is another JSON type (an object, a list, a float, a boolean).
    """
    value = row.get("id")
    if value is None:
        return f"line-{line}"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"'id' must be a string or an integer, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", float: "number"}
    names[type(None)] = "null"
    return names.get(type(value), "integer" if isinstance(value, int) else type(value).__name__)


def _takes_data_root(modality: Modality) -> bool:
    kind = type(modality)
    if kind not in _TAKES_DATA_ROOT:
        try:
            params = inspect.signature(modality.parse).parameters
        except (TypeError, ValueError):
            params = {}
        _TAKES_DATA_ROOT[kind] = "data_root" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )
    return _TAKES_DATA_ROOT[kind]


_TAKES_DATA_ROOT: dict[type, bool] = {}


def parse_row(
    row: Any,
    line: int,
    root: Path,
    *,
    modalities: Sequence[str | Modality] | None = None,
    data_root: Path | None = None,
    check_labels: bool = True,
) -> Sample:
    """Turn one decoded JSON value into a :class:`Sample` (raises ValueError with the cause).

    Args:
        row: The decoded JSON value.
        line: Its line number.
        root: Folder that relative paths start from.
        modalities: Plugin modalities to read besides the registered ones (instances,
            names or :func:`~mmctx.data.modalities.modality_spec` dicts); see
            :func:`known_modalities`.
        data_root: Folder every path must stay inside (default ``root``); checked before
            anything is stat'ed (see :func:`mmctx.data.paths.confined_path`).
        check_labels: Refuse a ``label`` that is no class name, index or list of them
            (:func:`check_label`); inference, which ignores labels, turns this off.
    """
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {_json_type(row)}")
    label = row.get(LABEL_KEY)
    sample = Sample(
        line=line, id=row_id(row, line), label=check_label(label) if check_labels else label
    )
    handlers = known_modalities(modalities)
    for m in handlers:
        if _takes_data_root(m):
            value = m.parse(row, root, data_root=data_root)
        else:  # an older plugin: its paths (via manifest_paths) stay in ``root``
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
    root: str | os.PathLike[str] | None = None,
) -> tuple[list[Sample], list[str]]:
    """Parse a manifest; every row is a sample or one reported skip, whatever it holds.

    Args:
        path: The JSON Lines file.
        strict: Raise :class:`ManifestError` at the first bad row instead of skipping it.
        modalities: Plugin modalities to read besides the registered ones (instances, or
            names); every registered modality is read in any case.
        root: Folder the manifest's paths must stay inside (default: the manifest's folder).

    Returns:
        ``(samples, problems)``: the good rows and one ``"<path>:<line>: <cause>"`` message
        per skipped row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    data_root = Path(root).expanduser() if root is not None else path.parent
    handlers = known_modalities(modalities)
    samples: list[Sample] = []
    problems: list[str] = []
    for line, row in iter_rows(path):
        try:
            if isinstance(row, ManifestError):
                raise row
            sample = parse_row(row, line, path.parent, modalities=handlers, data_root=data_root)
            sample.source = path
            samples.append(sample)
        except Exception as err:  # noqa: BLE001 - one row never ends the run
            error = row_error(path, line, err)
            if strict:
                raise error from None
            problems.append(str(error))
            log.warning("skipped %s", one_line(str(error)))  # a path may hold a newline
    if problems:
        log.warning("%s: skipped %d of %d rows", path, len(problems), len(problems) + len(samples))
    return samples, problems


def row_error(path: Path, line: int, err: BaseException) -> ManifestError:
    """``err`` as the :class:`ManifestError` of one row: ``"<path>:<line>: <cause>"``.

    Known causes keep their message; anything else is named by its exception type too.
    """
    if isinstance(err, ManifestError):
        return err
    return ManifestError(f"{path}:{line}: {row_cause(err)}")


def row_cause(err: BaseException) -> str:
    """The readable cause of a row's exception (its type too, when it is not a known one)."""
    if isinstance(err, RecursionError):
        return "the row is nested too deeply"
    if isinstance(err, (ValueError, OSError)) and str(err):
        return str(err)
    return f"{type(err).__name__}: {short_repr(str(err))}"


MAX_CLASSES = 100_000  # an integer label at or above this is refused, never a new class


def _label_item(x: Any) -> int | str:
    if isinstance(x, bool):
        raise ValueError(f"'label' {x!r} is a boolean; use a class name or a class index")
    if isinstance(x, int):
        if x < 0:
            raise ValueError(f"'label' index {x} is negative")
        if x >= MAX_CLASSES:
            raise ValueError(f"'label' index {short_repr(x)} is not below {MAX_CLASSES} (classes)")
        return x
    if isinstance(x, float):
        if math.isfinite(x) and x.is_integer():
            return _label_item(int(x))
        raise ValueError(f"'label' {x!r} is not a class name or a whole class index")
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"'label' {short_repr(x)} is not valid Unicode") from None
        if not x.strip():
            raise ValueError("'label' is an empty class name")
        return x
    raise ValueError(
        f"'label' must be a class name, a class index or a list of them, "
        f"got {_json_type(x)} {short_repr(x)}"
    )


def check_label(label: Any) -> int | str | list[int | str] | None:
    """A manifest label, checked and normalised (``2.0`` -> ``2``); None stays None.

    A label is a class name (non-empty string), a class index (``0 <= i <`` ``MAX_CLASSES``,
    a whole float is taken as an integer), or a list of them (a multi-label row; ``[]``
    means no class). Booleans, negative, fractional or non-finite numbers, objects and
    nested lists are refused.

    Raises:
        ValueError: The label is none of those; the message names the value.
    """
    if label is None:
        return None
    if isinstance(label, list):
        return [_label_item(x) for x in label]
    return _label_item(label)


class LabelSpace:
    """Class names and the mapping from manifest labels to indices.

    Labels may be class names (strings) or indices into ``classes``; a list of them makes a
    multi-label row. See :meth:`infer` for how the space is chosen from the labels seen.
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
    def infer(
        cls,
        labels: Iterable[Any],
        classes: Sequence[str] | None = None,
        *,
        multilabel: bool | None = None,
        on_error: Callable[[int, str], None] | None = None,
    ) -> LabelSpace:
        """One label space for a dataset, from its labels (None: an unlabelled row).

        The rules, so that one stray row never changes the space:

        - single- or multi-label is ``multilabel``; when None, the data is multi-label only
          if EVERY labelled row is a list;
        - classes are ``classes`` when given; otherwise, from the labels of the kind most
          labels have: sorted names, or ``"0" .. str(max)`` for indices;
        - a label that does not fit (see :func:`check_label`, a list in single-label data,
          an index among names or a name among indices when inferring, an unknown name or
          an index out of range) is that row's error, never a new class.

        Args:
            labels: One label per row, in order.
            classes: Class names in index order (default: inferred as above).
            multilabel: Force multi-label (True) or single-label (False).
            on_error: Called with ``(position in labels, message)`` for each label that does
                not fit, which is then ignored; without it the first one raises.

        Raises:
            ValueError: A label does not fit (without ``on_error``), or no label is usable
                and ``classes`` is not given.
        """

        def bad(i: int, message: str) -> None:
            if on_error is None:
                raise ValueError(message)
            on_error(i, message)

        checked: dict[int, Any] = {}
        for i, lab in enumerate(labels):
            if lab is None:
                continue
            try:
                checked[i] = check_label(lab)
            except ValueError as err:
                bad(i, str(err))
        if multilabel is None:
            multilabel = bool(checked) and all(isinstance(v, list) for v in checked.values())
        usable = {}
        for i, lab in checked.items():
            if isinstance(lab, list) and not multilabel:
                bad(i, f"a list label {short_repr(lab)} needs a multi-label dataset (set "
                    "multilabel: true, or make every labelled row a list)")  # fmt: skip
            else:
                usable[i] = lab if isinstance(lab, list) else [lab]
        space = cls(classes, multilabel) if classes else cls._from_labels(usable, multilabel, bad)
        for i, lab in usable.items():
            try:
                space.encode(lab if multilabel else lab[0])
            except ValueError as err:
                bad(i, str(err))
        return space

    @classmethod
    def _from_labels(
        cls, usable: dict[int, list[Any]], multilabel: bool, bad: Callable[[int, str], None]
    ) -> LabelSpace:
        names = sum(isinstance(x, str) for lab in usable.values() for x in lab)
        indices = sum(isinstance(x, int) for lab in usable.values() for x in lab)
        if names and indices:
            wrong, kind = (int, "a class index") if names >= indices else (str, "a class name")
            for i in [i for i, lab in usable.items() if any(isinstance(x, wrong) for x in lab)]:
                lab = usable.pop(i)
                shown = lab if multilabel else lab[0]
                bad(i, f"'label' {short_repr(shown)}: labels mix class names and indices and "
                    f"this is {kind}, the rarer kind (give `classes` to use both)")  # fmt: skip
        flat = [x for lab in usable.values() for x in lab]
        if not flat:
            raise ValueError("no labels found in the manifests; give `classes` explicitly")
        if all(isinstance(x, int) for x in flat):
            return cls([str(i) for i in range(max(flat) + 1)], multilabel)
        return cls(sorted(set(flat)), multilabel)

    def index(self, label: Any) -> int:
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < len(self.classes):
                return label
            raise ValueError(f"label index {label} is outside 0..{len(self.classes) - 1}")
        if isinstance(label, str) and label in self._index:
            return self._index[label]
        raise ValueError(f"unknown label {short_repr(label)}; known classes: {self.classes}")

    def encode(self, label: Any) -> int | list[int]:
        """Class index (multi-class) or list of indices (multi-label).

        Raises:
            ValueError: No label, or one that does not fit this space (named in the message).
        """
        if label is None:
            raise ValueError("the row has no 'label'")
        label = check_label(label)
        if self.multilabel:
            return sorted({self.index(x) for x in (label if isinstance(label, list) else [label])})
        if isinstance(label, list):
            raise ValueError(f"a list label {short_repr(label)} needs a multi-label dataset")
        return self.index(label)
