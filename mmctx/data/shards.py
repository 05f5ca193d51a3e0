"""Shards: a manifest decoded and checked once, then streamed with LitData.

:func:`write_shards` reads a manifest through the training data path (row parsing, the
readers and their limits, non-finite checks, label checks: :class:`ManifestDataset`) and
writes every good sample, already decoded and preprocessed, in LitData's chunked format
(``index.json`` + ``chunk-*.bin``, written by ``litdata``'s ``BinaryWriter``, the writer
under ``litdata.optimize``). Every bad row is counted and listed, in the returned report
and in ``mmctx_shards.json`` beside the chunks, never dropped silently.

Decoded arrays rather than the media files' bytes are stored because decoding (PNG, WAV,
resampling, video) is what the manifest path spends its time on: reading a shard is a copy
(see ``benchmarks/stream_bench.py``). The price: shards hold one preprocessing setting
(image size, sample rate, ...); a data module with other settings refuses them.

LitData fixes a sample's layout from the first one written, so every record has the same
keys: ``id``, ``line``, ``label`` (JSON), ``length`` (estimated fused length, for
token-budget batching) and one bytes field per modality, empty when the sample lacks it
(missing modalities stay missing). A modality's value is stored as UTF-8 text or as a
NumPy array of numbers (dtype, shape, raw bytes: no pickle, so reading a shard never runs
code; ``np.load``'s header parsing cost more than the rest of reading a sample).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmctx.data.dataset import ManifestDataset, _check_inputs
from mmctx.data.manifest import LabelSpace, Sample
from mmctx.data.modalities import modality_spec
from mmctx.data.preprocess import Preprocess, SampleError
from mmctx.errors import ConfigError, one_line

log = logging.getLogger(__name__)

META_FILE = "mmctx_shards.json"  # beside LitData's index.json
FORMAT_VERSION = 1


@dataclass
class ShardReport:
    """What :func:`write_shards` did."""

    out: str
    written: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "written": self.written,
            "skipped": len(self.problems),
            "problems": self.problems,
            "seconds": round(self.seconds, 2),
        }


def encode_value(value: Any) -> bytes:
    """A loaded modality value as bytes: ``b"s"`` + UTF-8 text, or ``b"a"`` + dtype, shape
    and the array's bytes.

    Raises:
        TypeError: The value is neither text nor a NumPy array (a plugin modality whose
            ``load`` returns something else cannot be sharded).
    """
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        dtype = value.dtype.str.encode("ascii")  # e.g. b"<f4": no object arrays, no pickle
        head = struct.pack(
            f"<B{len(dtype)}sB{value.ndim}q", len(dtype), dtype, value.ndim, *value.shape
        )
        return b"a" + head + np.ascontiguousarray(value).tobytes()
    raise TypeError(f"cannot shard a loaded value of type {type(value).__name__}")


def decode_value(data: bytes | memoryview) -> str | np.ndarray:
    """The inverse of :func:`encode_value`; a ValueError for bytes it did not write."""
    data = memoryview(data)  # LitData hands out memoryviews; slices of them do not copy
    kind = bytes(data[:1])
    if kind == b"s":
        return str(data[1:], "utf-8")
    if kind == b"a":
        (size,) = struct.unpack_from("<B", data, 1)
        dtype, ndim = struct.unpack_from(f"<{size}sB", data, 2)
        shape = struct.unpack_from(f"<{ndim}q", data, 3 + size)
        body = data[3 + size + 8 * ndim :]
        return np.frombuffer(body, np.dtype(dtype.decode("ascii"))).reshape(shape).copy()
    raise ValueError(f"not a stored value (starts with {bytes(data[:8])!r})")


def to_record(sample: Sample, inputs: dict[str, Any], modalities: Sequence[str], length: int):
    """The stored form of one loaded sample (same keys for every sample)."""
    record: dict[str, Any] = {
        "id": sample.id,
        "line": sample.line,
        "label": json.dumps(sample.label),
        "length": int(length),
    }
    for name in modalities:
        record[f"m_{name}"] = encode_value(inputs[name]) if name in inputs else b""
    return record


def from_record(record: dict[str, Any], source: str) -> Sample:
    """A :class:`Sample` whose ``media`` holds the stored (still encoded) values."""
    media = {key[2:]: value for key, value in record.items() if key.startswith("m_") and value}
    return Sample(
        line=int(record["line"]),
        id=str(record["id"]),
        media=media,
        label=json.loads(record["label"]),
        source=Path(source),
    )


class StoredSamples(ManifestDataset):
    """Loads samples read from shards: the stored values instead of the media files, then
    the same augmentation, checks, labels and per-sample errors as :class:`ManifestDataset`.

    Used as a LitData ``transform`` (``record -> loaded sample | SampleError``).
    """

    def __init__(self, source: str, *args: Any, **kwargs: Any) -> None:
        super().__init__([], *args, **kwargs)
        self.source = source

    def __call__(self, record: dict[str, Any]) -> dict[str, Any] | SampleError:
        try:
            sample = from_record(record, self.source)
        except Exception as err:  # noqa: BLE001 - a damaged record is that sample's error
            message = f"record in {self.source}: {type(err).__name__}: {err}"
            log.warning("skipped %s", one_line(message))
            return SampleError(message)
        loaded = self.load_sample(sample)
        if isinstance(loaded, dict):
            loaded["length"] = int(record["length"])  # for token-budget batching
        return loaded

    def _load(self, sample: Sample) -> dict[str, Any]:
        inputs = {
            name: decode_value(value)
            for name, value in sample.media.items()
            if name in self.modalities
        }
        _check_inputs(inputs, sample)  # a damaged shard cannot pass non-finite values on
        return inputs


def write_metadata(out: Path, meta: dict[str, Any]) -> None:
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def read_metadata(shards: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``mmctx_shards.json`` of a shard folder or object-store URL.

    Raises:
        ConfigError: The folder or URL holds no shards written by ``mmctx shard``.
    """
    if "://" not in shards or shards.startswith("local:"):
        path = Path(shards.removeprefix("local:")).expanduser() / META_FILE
    else:
        path = _download_metadata(shards, storage_options or {})
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{shards} holds no shards written by `mmctx shard` ({META_FILE}: {err}); "
            "write them with `mmctx shard --manifest train.jsonl --out DIR`"
        ) from None
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(
            f"{shards}: shard format {meta.get('format')!r}, expected {FORMAT_VERSION}"
        )
    return meta


def _download_metadata(url: str, storage_options: dict[str, Any]) -> Path:
    import tempfile

    from litdata.streaming.downloader import get_downloader

    local = Path(tempfile.mkdtemp(prefix="mmctx-shards-")) / META_FILE
    try:
        get_downloader(url, str(local.parent), [], storage_options).download_file(
            url.rstrip("/") + "/" + META_FILE, str(local)
        )
    except Exception as err:  # noqa: BLE001 - any transport failure is the same stop
        raise ConfigError(f"cannot read {url}/{META_FILE}: {type(err).__name__}: {err}") from None
    return local


def check_preprocess(shards: str, meta: dict[str, Any], preprocess: Preprocess) -> None:
    """Raise ConfigError naming every setting where the shards and the data module differ."""
    wanted = json.loads(json.dumps(asdict(preprocess)))
    stored = meta["preprocess"]
    wrong = [
        f"{key}: shards {stored.get(key)!r}, config {value!r}"
        for key, value in wanted.items()
        if stored.get(key) != value
    ]
    if wrong:
        raise ConfigError(
            f"{shards} was written with other preprocessing ({'; '.join(wrong)}): "
            "shard again with this config (`mmctx shard --config ...`) or use the shards' settings"
        )


def metadata(dataset: ManifestDataset, labels: LabelSpace | None, report: ShardReport) -> dict:
    """What ``mmctx_shards.json`` records: settings, label space, counts and problems."""
    return {
        "format": FORMAT_VERSION,
        "modalities": [modality_spec(m) for m in dataset.handlers],
        "preprocess": json.loads(json.dumps(asdict(dataset.pre))),
        "class_names": None if labels is None else labels.classes,
        "multilabel": None if labels is None else labels.multilabel,
        **report.summary(),
    }


def chunk_bytes_arg(text: str) -> str:
    """``--chunk-bytes``: a size LitData understands (``64MB``, ``256kb``, ``1000000``)."""
    from litdata.utilities.format import _convert_bytes_to_int

    try:
        value = int(text) if text.isdigit() else _convert_bytes_to_int(text)
    except Exception:  # noqa: BLE001 - any parse failure is the same usage error
        raise ValueError(f"--chunk-bytes {text!r} is not a size such as 64MB") from None
    if value <= 0:
        raise ValueError(f"--chunk-bytes must be > 0, got {text!r}")
    return str(value)


def empty_folder(out: Path) -> None:
    """Create ``out``; refuse one that already holds files (shards are never mixed)."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; choose a new folder or delete it first")
    os.makedirs(out, exist_ok=True)
